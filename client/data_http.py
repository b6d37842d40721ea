"""Requests to the daemon's data endpoints (uploads, the inbox), which need the local API token. The
token and the URL come from the facility configuration (its state_dir and [listen] local), or from
--url with --token-file.

Standard library only (http.client): uploads stream from disk and never sit whole in memory.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlinkmed.qcore.errors import UsageError

if TYPE_CHECKING:
    from qlinkmed.qlinkd.ops.config import FacilityConfig

from .daemon_http import CONFIG_ENV, ApiError, TargetError, add_local_target, base_url, facility_config

TOKEN_FILE = "local-api.token"
TIMEOUT_S = 30.0


def add_data_target(parser: argparse.ArgumentParser) -> None:
    """--config FILE | --url URL, as for every local-API command, plus the token for --url."""
    add_local_target(parser)
    parser.add_argument(
        "--token-file", type=Path, metavar="FILE", help=f"local API token (default: state_dir/{TOKEN_FILE})"
    )


def token_path(config: FacilityConfig) -> Path:
    return config.state_dir / TOKEN_FILE


class DataTarget:
    def __init__(self, url: str, token: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.token = token

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterable[bytes] | None = None,
        length: int | None = None,
        timeout: float = TIMEOUT_S,
    ) -> tuple[int, bytes, http.client.HTTPMessage]:
        """(status, body, headers). Raises ApiError when the daemon cannot be reached."""
        url = f"{self.url}{path}"
        connection = self._connection(timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            if body is not None:
                headers["Content-Type"] = "application/octet-stream"
                if length is not None:
                    size = length
                elif isinstance(body, bytes | bytearray):
                    size = len(body)
                else:  # a stream's length is the caller's to say: it is sent before the stream
                    raise UsageError("a streamed body needs its length")
                headers["Content-Length"] = str(size)
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(), response.headers
        except TimeoutError:
            raise ApiError(url, f"no answer within {timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            raise ApiError(url, getattr(exc, "strerror", None) or str(exc) or type(exc).__name__) from None
        finally:
            connection.close()

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, data, _ = self.request(method, path, **kwargs)
        try:
            return status, json.loads(data)
        except ValueError:
            raise ApiError(f"{self.url}{path}", f"HTTP {status}: the answer is not JSON") from None


def data_target(args: argparse.Namespace) -> DataTarget:
    """The daemon and token chosen by add_data_target's flags. Raises TargetError."""
    token_file: Path | None = args.token_file
    if args.url is not None:
        url = base_url(args.url)
        if token_file is None:
            raise TargetError("--url needs --token-file (or use --config)")
    else:
        path = args.config or os.environ.get(CONFIG_ENV)
        if not path:
            raise TargetError(f"say which daemon: --config FILE, --url URL or ${CONFIG_ENV}")
        config = facility_config(Path(path))
        url = f"http://{config.listen.local}"
        token_file = token_file or token_path(config)
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise TargetError(f"cannot read the local API token {token_file}: {exc.strerror or exc}") from None
    return DataTarget(url, token)


def error_message(status: int, body: Any) -> str:
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {status}: {message or 'refused'}"
