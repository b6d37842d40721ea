"""The quantum-channel service (`qlink-channel`), a process of its own that emulates the fibre between two
facilities. The daemon never imports this package (a test enforces it)."""
