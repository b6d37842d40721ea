"""The fixtures shared across the test folders. The one polling helper is tests/polling.py, the in-process
`qlink` runner tests/cli.py, the in-memory link pair tests/link_pair.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.testbeds import Testbeds


@pytest.fixture
def testbeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbeds]:
    """Loopback deployments whose processes live as long as one test."""
    testbeds = Testbeds(tmp_path_factory)
    try:
        yield testbeds
    finally:
        testbeds.stop_all()


@pytest.fixture(scope="module")
def module_testbeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbeds]:
    """Loopback deployments whose processes serve every test of a module (a module fixture builds on it)."""
    testbeds = Testbeds(tmp_path_factory)
    try:
        yield testbeds
    finally:
        testbeds.stop_all()
