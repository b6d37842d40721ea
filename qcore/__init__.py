"""qcore: the pure, synchronous heart of qlink.

Channel emulator, BB84 and E91 on two measurement backends, key distillation (sifting, estimation,
Cascade, verification, privacy amplification, Wegman-Carter authentication accounting) and key-rate
theory. Nothing here touches sockets, files, clocks or global randomness: time and randomness come in
as arguments, so every run is reproducible from a seed.
"""
