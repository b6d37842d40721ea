"""Tests of the daemon: its layers in the subpackages, whole daemons here."""
