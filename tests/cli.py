"""The `qlink` command line run in-process through its `main()`, for the tests that drive it against
running daemons: the exit code and what it printed, as a user at a terminal would see them."""

from __future__ import annotations

import pytest

from qlinkmed.client.cli import main


def qlink(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `qlink ARGS` in-process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse reports usage errors by exiting
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
