"""Tests of the key pool and the ETSI GS QKD 014 API."""
