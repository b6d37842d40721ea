"""Requests to the daemon's data endpoints (uploads, the inbox), which need the local API token. The
token and the URL come from the facility configuration (its state_dir and [listen] local), or from
--url with --token-file.

Standard library only (http.client): uploads stream from disk and never sit whole in memory. One
`DataTarget` keeps one connection open across its requests (HTTP/1.1 keep-alive), so a command that
sends many messages pays for one TCP connection, not one each.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import select
import sys
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlinkmed.qcore.errors import UsageError

if TYPE_CHECKING:
    from qlinkmed.qlinkd.ops.config import FacilityConfig

from .daemon_http import (
    CONFIG_ENV,
    ApiError,
    LocalEndpoint,
    TargetError,
    add_local_target,
    base_url,
    local_endpoint,
    unreachable,
)

TOKEN_FILE = "local-api.token"
TIMEOUT_S = 30.0


def add_data_target(parser: argparse.ArgumentParser) -> None:
    """--config FILE | --url URL, as for every local-API command, plus the token for --url."""
    add_local_target(parser)
    parser.add_argument(
        "--token-file", type=Path, metavar="FILE", help=f"local API token (default: state_dir/{TOKEN_FILE})"
    )


def token_path(config: FacilityConfig | LocalEndpoint) -> Path:
    return config.state_dir / TOKEN_FILE


_INBOX_ID = re.compile(r"(/v1/inbox/)(.+?)(/files/[^/]*)?")
"""An inbox path: the transfer id in it is the user's text, whatever it holds."""


def _encoded(path: str) -> str:
    """`path` (with its query, already encoded) as it may go on the request line. A transfer id the user
    typed is percent-encoded whole, so any id ("a b", "../x", "a/b") reaches the inbox route and gets
    the daemon's own answer (404: no such transfer) instead of a URL error or another route."""
    route, mark, query = path.partition("?")
    match = _INBOX_ID.fullmatch(route)
    if match is not None:
        # quote() leaves "." alone; "." and ".." segments would be resolved away before routing.
        tid = urllib.parse.quote(match[2], safe="").replace(".", "%2E")
        route = f"{match[1]}{tid}{match[3] or ''}"
    return f"{route}{mark}{query}"


class DataTarget:
    def __init__(self, url: str, token: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.token = token
        # One kept connection per thread: a target shared by threads (a poll beside an upload) must not
        # interleave two requests on one socket.
        self._kept = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        kept: http.client.HTTPConnection | None = getattr(self._kept, "connection", None)
        if kept is not None and kept.sock is not None and select.select([kept.sock], [], [], 0)[0]:
            # Readable while idle: the daemon closed it (its keep-alive timeout, a restart). A request
            # sent on it would fail, so open a fresh one first, as urllib3 does, rather than retry after.
            self.close()
            kept = None
        if kept is None:
            kept = self._kept.connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        elif kept.sock is not None:
            kept.sock.settimeout(timeout)
        kept.timeout = timeout
        return kept

    def close(self) -> None:
        """Close this thread's connection kept open between requests (its next request opens another)."""
        kept: http.client.HTTPConnection | None = getattr(self._kept, "connection", None)
        if kept is not None:
            kept.close()
            self._kept.connection = None

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterable[bytes] | None = None,
        length: int | None = None,
        timeout: float = TIMEOUT_S,
    ) -> tuple[int, bytes, http.client.HTTPMessage]:
        """(status, body, headers). Raises ApiError when the daemon cannot be reached; the connection is
        kept for the next request unless the daemon or an error closed it. A failed request is never
        repeated: an upload the daemon may have queued must not be queued twice."""
        url = f"{self.url}{path}"
        connection = self._connection(timeout)
        keep = False
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
            connection.request(method, _encoded(path), body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            keep = not response.will_close
            return response.status, data, response.headers
        except TimeoutError:
            raise ApiError(url, f"no answer within {timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            raise ApiError(url, getattr(exc, "strerror", None) or str(exc) or type(exc).__name__) from None
        finally:
            if not keep:
                self.close()

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, parsed JSON). An error status whose body is not JSON (a proxy's or the web server's
        own page) comes back as {"message": its reason}: the daemon answered, so it is not unreachable.
        ApiError when it cannot be reached, or a success is not JSON."""
        status, data, _ = self.request(method, path, **kwargs)
        try:
            return status, json.loads(data)
        except ValueError:
            if status >= 400:
                return status, {"message": http.client.responses.get(status, "error")}
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
        endpoint = local_endpoint(Path(path))
        url = endpoint.url
        token_file = token_file or token_path(endpoint)
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise TargetError(f"cannot read the local API token {token_file}: {exc.strerror or exc}") from None
    return DataTarget(url, token)


def error_message(status: int, body: Any) -> str:
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {status}: {message or 'refused'}"


def usage_refusal(status: int, body: Any) -> bool:
    """Whether the daemon refused the request's own parameters (an unknown peer, a bad wait): its 400
    answer then names the parameter in "field". A usage error (exit 2), not a failed operation."""
    return status == 400 and isinstance(body, dict) and isinstance(body.get("field"), str)


def ask_json(args: argparse.Namespace, prog: str, method: str, path: str, body: bytes | None) -> Any:
    """The daemon's JSON answer to one request of an operator's command (--config/--url and the token
    from `args`), or, when there is none, the exit code after one line saying why: 2 for a bad target or
    a request the daemon refused as malformed or naming what it does not have (400/404), 1 otherwise."""
    try:
        target = data_target(args)
    except TargetError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        return 2
    try:
        status, answer = target.json(method, path, body=body)
    except ApiError as exc:
        print(unreachable("qlinkd", exc), file=sys.stderr)
        return 1
    if status != 200:
        print(f"{prog}: error: {error_message(status, answer)}", file=sys.stderr)
        return 2 if status in (400, 404) else 1
    return answer
