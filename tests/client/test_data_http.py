"""The CLI's data-API client before any connection: what it refuses to send."""

from __future__ import annotations

import urllib.parse

import pytest

from qlinkmed.client.commands.send import transfer_query
from qlinkmed.client.data_http import DataTarget


def test_a_streamed_body_without_its_length_is_refused_before_connecting() -> None:
    # Port 9 (discard) on loopback: were a connection attempted, the error would be an ApiError instead.
    target = DataTarget("http://127.0.0.1:9", "token")
    chunks = iter([b"abc", b"def"])
    with pytest.raises(ValueError, match="needs its length"):
        target.request("POST", "/upload", body=chunks)
    assert next(chunks) == b"abc"  # nothing of the stream was read


def test_a_peer_name_cannot_smuggle_query_parameters() -> None:
    # Regression: `qlink send --to 'hospital-b&wait=0'` built "?to=hospital-b&wait=0&wait=600".
    path, _, query = transfer_query("hospital-b&wait=0", 600.0).partition("?")
    assert path == "/v1/transfers"
    assert urllib.parse.parse_qs(query, strict_parsing=True) == {"to": ["hospital-b&wait=0"], "wait": ["600"]}
