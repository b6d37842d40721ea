"""Tests of the quantum-channel service."""
