"""The loopback testbed: a generated deployment (CA, certificates, configurations) and a launcher for its
processes. Used by `qlink testbed`, `qlink demo`, the tests and the benchmarks; the daemon never imports
it."""
