"""JSON over plain HTTP to the daemons' loopback APIs (qlinkd's local API, the channel service's admin API),
and where to find them: a URL given on the command line or the address a configuration file names.

Standard library only, so that importing a command module for `qlink --help` stays fast; the configuration
loaders (which import numpy through qcore) are imported when a configuration is actually read.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlinkmed.qlinkd.errors import ConfigError, StatusFormatError
from qlinkmed.qlinkd.link.status import LinkStatus

if TYPE_CHECKING:
    from qlinkmed.qlinkd.channel.config import ChannelServiceConfig
    from qlinkmed.qlinkd.ops.config import FacilityConfig

TIMEOUT_S = 5.0
"""Long enough for a daemon busy distilling, short enough that a hung one is reported promptly."""

# Never route a loopback API through an http_proxy from the environment: the request would leave the host.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ApiError(Exception):
    """A call that did not return a JSON answer. `status` is the HTTP status when the server answered with
    an error, None when it could not be reached or its answer was not JSON. `usage`: the server refused
    the request's own parameters (exit 2, not 1)."""

    def __init__(self, url: str, reason: str, *, status: int | None = None, usage: bool = False) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status
        self.usage = usage


class TargetError(Exception):
    """Where to send the request cannot be worked out: a malformed URL or an unusable configuration file.
    `message` is one line for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def base_url(text: str) -> str:
    """Normalise "http://host:port[/]" to "http://host:port"; anything else raises TargetError."""
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise TargetError(f"--url {text!r}: {exc}") from None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise TargetError(f"--url must look like http://127.0.0.1:PORT, got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise TargetError(f"--url takes only scheme, host and port, got {text!r}")
    return f"http://{parts.netloc}"


EXIT_FAILURE, EXIT_USAGE = 1, 2

CONFIG_ENV = "QLINK_CONFIG"
"""Environment variable naming the facility configuration when neither --config nor --url is given."""


def add_local_target(parser: argparse.ArgumentParser) -> None:
    """--config FILE | --url URL: which facility daemon to ask."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--config", type=Path, metavar="FILE", help=f"facility configuration (default: ${CONFIG_ENV})"
    )
    group.add_argument("--url", metavar="URL", help="local API of the daemon, http://127.0.0.1:PORT")


def local_target(args: argparse.Namespace) -> str:
    """The local-API URL chosen by add_local_target's flags, else by $QLINK_CONFIG. Raises TargetError."""
    if args.url is not None:
        return base_url(args.url)
    path = args.config or os.environ.get(CONFIG_ENV)
    if not path:
        raise TargetError(f"say which daemon: --config FILE, --url URL or ${CONFIG_ENV}")
    return local_url_from_config(Path(path))


def facility_config(path: Path) -> FacilityConfig:
    """The facility configuration at `path`; TargetError naming the bad field otherwise."""
    from qlinkmed.qlinkd.ops.config import load_facility_config

    try:
        return load_facility_config(path)
    except ConfigError as exc:
        raise TargetError(f"config error: {exc.field}: {exc.message}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalEndpoint:
    """Where a facility daemon answers the CLI, as its configuration names it."""

    url: str
    """Its local API, http://HOST:PORT ([listen] local)."""
    state_dir: Path
    """Its state directory ([facility] state_dir), which holds the local API token."""


def local_endpoint(path: Path) -> LocalEndpoint:
    """The two fields of the facility configuration at `path` that the CLI needs to talk to its daemon,
    read with the daemon's own TOML reader. Not the whole configuration model: loading that imports
    qcore (numpy and the protocol modules), a third of a second a call, and the daemon checked the whole
    file when it started. TargetError naming the bad field otherwise."""
    from qlinkmed.qlinkd.ops.toml_reader import read_toml

    try:
        root = read_toml(path)
        state_dir = root.table("facility").path("state_dir")
        local = root.table("listen").address("local")
    except ConfigError as exc:
        raise TargetError(f"config error: {exc.field}: {exc.message}") from None
    return LocalEndpoint(url=f"http://{local}", state_dir=state_dir)


def local_url_from_config(path: Path) -> str:
    """The local-API URL of the facility whose configuration is `path` (its [listen] local)."""
    return local_endpoint(path).url


def channel_config(path: Path) -> ChannelServiceConfig:
    """The channel service configuration at `path`; TargetError naming the bad field otherwise."""
    from qlinkmed.qlinkd.channel.config import load_channel_config

    try:
        return load_channel_config(path)
    except ConfigError as exc:
        raise TargetError(f"config error: {exc.field}: {exc.message}") from None


def ask_local(args: argparse.Namespace, command: str, path: str) -> tuple[str, Any] | int:
    """(body as received, parsed JSON) of GET `path` on the daemon named by add_local_target's flags, or
    the exit code after printing the one line that says why not."""
    try:
        url = local_target(args)
    except TargetError as exc:
        print(f"qlink {command}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return call(f"{url}{path}")
    except ApiError as exc:
        print(unreachable("qlinkd", exc), file=sys.stderr)
        return EXIT_FAILURE


def link_statuses(status: object) -> list[LinkStatus]:
    """The links of a GET /v1/status answer, parsed into the daemon's own status type (its module is
    standard library only). StatusFormatError names the field when the answer is not a status."""
    if not isinstance(status, dict):
        raise StatusFormatError("status", f"expected an object, got {type(status).__name__}")
    links = status.get("links", [])
    if not isinstance(links, list):
        raise StatusFormatError("links", f"expected a list, got {type(links).__name__}")
    return [LinkStatus.from_json(link) for link in links]


def unreachable(what: str, exc: ApiError) -> str:
    """The one line printed when a daemon cannot be asked."""
    base = exc.url.split("/v1/", 1)[0]
    if exc.status is None:
        return f"qlink: cannot reach {what} at {base}: {exc.reason}"
    return f"qlink: {what} at {base} refused the request: {exc.reason}"


def call(
    url: str, *, method: str = "GET", body: dict[str, Any] | None = None, token: str | None = None
) -> tuple[str, Any]:
    """Send one request (with `token` as its bearer token, when given) and return (the body as received,
    the parsed JSON). Raises ApiError."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=TIMEOUT_S) as response:
            text = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise ApiError(url, _error_message(exc), status=exc.code) from None
    except urllib.error.URLError as exc:
        raise ApiError(url, _reason(exc.reason)) from None
    except (http.client.HTTPException, OSError) as exc:
        raise ApiError(url, _reason(exc)) from None
    try:
        return text, json.loads(text)
    except ValueError:
        raise ApiError(url, "the answer is not JSON") from None


def _reason(exc: object) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_S:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _error_message(exc: urllib.error.HTTPError) -> str:
    # The daemons answer errors as {"message": ...}; show that rather than the bare status line.
    try:
        message = json.loads(exc.read().decode("utf-8", errors="replace")).get("message")
    except (ValueError, AttributeError, OSError):
        message = None
    return f"HTTP {exc.code}: {message or exc.reason}"
