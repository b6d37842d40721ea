"""Tests of the link layer."""
