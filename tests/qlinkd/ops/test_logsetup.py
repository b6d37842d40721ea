"""Daemon logging: JSON lines, and a peer's malformed HTTP turned into one warning without its bytes."""

from __future__ import annotations

import json
import logging
import sys

from aiohttp.http_exceptions import BadStatusLine

from qlinkmed.qlinkd.ops.logsetup import JsonFormatter, MalformedRequestFilter


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except type(exc):
        info = sys.exc_info()
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), info)


def test_malformed_request_becomes_one_warning_without_the_peer_bytes() -> None:
    record = _record(BadStatusLine("\x16\x03secret-looking-bytes"))
    assert MalformedRequestFilter().filter(record)
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["level"] == "warning" and "BadStatusLine" in entry["msg"]
    assert "exc" not in entry and "secret-looking-bytes" not in line


def test_other_server_errors_keep_their_traceback() -> None:
    record = _record(RuntimeError("handler bug"))
    assert MalformedRequestFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "error" and "handler bug" in entry["exc"]
