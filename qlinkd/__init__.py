"""qlinkd: the facility daemon. So far: the wire codec (`wire.py`) between protobuf frames and qcore's
protocol messages; the daemon itself arrives with issue 3."""
