"""Tests of the content checks and at-rest forms."""
