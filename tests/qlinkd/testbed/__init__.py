"""Tests of the loopback testbed: the WAN emulator proxy."""
