"""Spec and policy constants that more than one module needs, in one place (wireguard-go's
``device/constants.go``). Each says where its value comes from."""

from __future__ import annotations

import math
import re

QBER_TOLERANCE = 0.11
"""Default abort threshold on the QBER: the Shor-Preskill asymptotic rate 1 - 2h(Q) reaches zero near
11 % (docs/references.md §2)."""

CHSH_CLASSICAL_BOUND = 2.0
"""The largest CHSH value local hidden variables allow: E91 rounds abort unless the lower bound on S
exceeds it."""

TSIRELSON_BOUND = 2.0 * math.sqrt(2.0)
"""The largest CHSH value quantum mechanics allows, 2 sqrt(2) (Tsirelson's bound)."""

FACILITY_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
"""A facility id: lower-case letters, digits and hyphens, starting with a letter or digit, at most 63
characters (a DNS label's length). It is the facility's certificate CN and travels in every hello, so the
configuration loader, the hello check and the transfer manifests all use this one pattern."""


def is_facility_id(value: str) -> bool:
    """Whether `value` is a well-formed facility id (``FACILITY_ID_PATTERN``, matched whole)."""
    return FACILITY_ID_PATTERN.fullmatch(value) is not None
