"""The strict TOML reader both configurations use: a facility's (`ops/config.py`) and the channel
service's (`channel/config.py`).

A missing field, a wrong type, an unknown key (a typo must not silently fall back to a default), an
out-of-range value or an unreadable referenced file raises `ConfigError` naming the dotted field path.
Relative paths are resolved against the directory of the configuration file.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qlinkmed.qlinkd.errors import ConfigError

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MISSING: Any = object()
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """A host and TCP port to bind or connect to."""

    host: str
    """IPv4 or IPv6 literal (without brackets) or a DNS name."""
    port: int
    """0..65535; 0 binds a free port (tests)."""

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str, field: str) -> tuple[str, int]:
    """Split "host:port" ("[v6]:port" for IPv6) into (host, port), or raise ConfigError(field, ...)."""
    if not isinstance(text, str):
        raise ConfigError(field, "must be a string host:port")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(field, "must be host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(field, f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(field, "an IPv6 address must be in brackets: [addr]:port")
    elif not _valid_host(host):
        raise ConfigError(field, f"{host!r} is not an IP address or host name")
    if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(field, f"port must be an integer in 0..65535, got {port_text!r}")
    return host, int(port_text)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in host.split("."))
    return True


def check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)


class Table:
    """A TOML table being consumed; every read names its dotted path, leftovers are unknown keys."""

    def __init__(self, data: dict[str, Any], path: str, base: Path) -> None:
        self._data = data
        self._path = path
        self._used: set[str] = set()
        self.base = base

    @property
    def where(self) -> str:
        return self._path

    def name(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _raw(self, key: str, default: Any) -> Any:
        self._used.add(key)
        if key in self._data:
            return self._data[key]
        if default is _MISSING:
            raise ConfigError(self.name(key), "required field is missing")
        return default

    def text(self, key: str, default: Any = _MISSING) -> str:
        value = self._raw(key, default)
        check(isinstance(value, str), self.name(key), f"must be a string, got {_kind(value)}")
        return value

    def integer(self, key: str, default: Any = _MISSING) -> int:
        value = self._raw(key, default)
        ok = isinstance(value, int) and not isinstance(value, bool)
        check(ok, self.name(key), f"must be an integer, got {_kind(value)}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._raw(key, default)
        check(isinstance(value, bool), self.name(key), f"must be true or false, got {_kind(value)}")
        return bool(value)

    def number(self, key: str, default: Any = _MISSING) -> float:
        value = self._raw(key, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        check(ok, self.name(key), f"must be a number, got {_kind(value)}")
        check(math.isfinite(value), self.name(key), "must be finite")
        return float(value)

    def has(self, key: str) -> bool:
        """Whether the table gives `key` (for fields whose absence means something of its own)."""
        return key in self._data

    def number_list(self, key: str) -> tuple[float, ...]:
        value = self._raw(key, _MISSING)
        check(isinstance(value, list), self.name(key), f"must be an array of numbers, got {_kind(value)}")
        for i, item in enumerate(value):
            ok = isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item)
            check(ok, f"{self.name(key)}[{i}]", f"must be a finite number, got {_kind(item)}")
        return tuple(float(v) for v in value)

    def str_list(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._raw(key, default)
        check(isinstance(value, list), self.name(key), f"must be an array of strings, got {_kind(value)}")
        for i, item in enumerate(value):
            check(isinstance(item, str), f"{self.name(key)}[{i}]", f"must be a string, got {_kind(item)}")
        return tuple(value)

    def address(self, key: str) -> Address:
        host, port = parse_address(self.text(key), self.name(key))
        return Address(host=host, port=port)

    def optional_address(self, key: str) -> Address | None:
        return self.address(key) if key in self._data else self._raw(key, None)

    def choice(self, key: str, enum: Callable[[str], T], choices: tuple[str, ...], default: Any) -> T:
        value = self.text(key, default)
        check(value in choices, self.name(key), f"must be one of {' | '.join(choices)}, got {value!r}")
        return enum(value)

    def path(self, key: str) -> Path:
        text = self.text(key)
        check(bool(text), self.name(key), "must not be empty")
        return (self.base / Path(text).expanduser()).resolve()

    def file(self, key: str) -> Path:
        path = self.path(key)
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ConfigError(self.name(key), f"cannot read {path}: {exc.strerror or exc}") from None
        return path

    def table(self, key: str, *, optional: bool = False) -> Table:
        value = self._raw(key, {} if optional else _MISSING)
        check(isinstance(value, dict), self.name(key), f"must be a table, got {_kind(value)}")
        return Table(value, self.name(key), self.base)

    def tables(self, key: str) -> list[Table]:
        value = self._raw(key, [])
        ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
        check(ok, self.name(key), f"must be an array of tables ([[{key}]]), got {_kind(value)}")
        return [Table(v, f"{self.name(key)}[{i}]", self.base) for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = [key for key in self._data if key not in self._used]
        if unknown:
            raise ConfigError(self.name(unknown[0]), "unknown key (misspelt?)")


def _kind(value: Any) -> str:
    return {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "an array"}.get(
        type(value), "a table" if isinstance(value, dict) else type(value).__name__
    )


def build(prefix: str, factory: Callable[..., T], **kwargs: Any) -> T:
    """Construct a validated dataclass, prefixing its field name with the section path on error."""
    try:
        return factory(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc.field}" if prefix else exc.field, exc.message) from None


def read_toml(path: Path) -> Table:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message names the line and column: "... (at line 3, column 9)".
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None
    return Table(data, "", path.resolve().parent)
