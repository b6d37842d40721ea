"""Tests of the operations layer."""
