"""A reader for a testbed facility's inbox: since the facility token sends but no longer reads patient
data, the demo, the benchmarks and the tests read through a user holding the testbed's `all-data` role
(`deployment.READER_ROLE`), added through the local API as `qlink user add` does. Its token is written
0600 beside the deployment (``<root>/users/<facility>-<name>.token``) and reused while it exists."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

from qlinkmed.qlinkd.testbed.deployment import READER_ROLE, Deployment

TIMEOUT_S = 30.0


def add_user(url: str, facility_token: str, name: str, roles: tuple[str, ...]) -> str:
    """Add a user at the daemon whose local API is `url`; returns the user's token (shown only now)."""
    body = json.dumps({"name": name, "roles": list(roles), "who": "testbed"}).encode()
    request = urllib.request.Request(
        f"{url}/v1/users",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {facility_token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
        return str(json.loads(answer.read())["token"])


def reader_token_file(deployment: Deployment, facility: str, name: str = "reader") -> Path:
    """The token file of `facility`'s all-data reader `name`, the user added on first call."""
    path = deployment.root / "users" / f"{facility}-{name}.token"
    if path.exists():
        return path
    state = deployment.root / "state" / facility / "local-api.token"
    token = add_user(deployment.local_url(facility), state.read_text().strip(), name, (READER_ROLE,))
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return path


def reader_token(deployment: Deployment, facility: str, name: str = "reader") -> str:
    return reader_token_file(deployment, facility, name).read_text().strip()
