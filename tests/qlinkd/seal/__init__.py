"""Tests of the sealing layer."""
