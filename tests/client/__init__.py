"""Tests of the qlink command line."""
