"""Tests of qcore, the pure protocol library."""
