"""Loopback deployments for the end-to-end tests: each written in a fresh folder under pytest's temporary
directory, its processes (the channel service and the facility daemons) started with `ProcessGroup` and
awaited until ready, and every group stopped when the fixture that made them ends, the newest first.
The fixtures are in tests/conftest.py: `testbeds` for one test, `module_testbeds` for a module's shared
deployment."""

from __future__ import annotations

from typing import Any

import pytest

from qlinkmed.qlinkd.testbed.deployment import Deployment, write_loopback_deployment
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup


class Testbeds:
    __test__ = False  # a helper, not a test class, whatever pytest's name pattern says

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self._groups: list[ProcessGroup] = []

    def write(self, **options: Any) -> Deployment:
        """A new loopback deployment; `options` are `write_loopback_deployment`'s keywords."""
        return write_loopback_deployment(self._tmp_path_factory.mktemp("testbed") / "deployment", **options)

    def start(self, deployment: Deployment, *names: str, env: dict[str, str] | None = None) -> ProcessGroup:
        """Start the deployment's processes, all of them or only `names` (with `env` added to their
        environment), and return once every one has reported READY=1."""
        group = ProcessGroup(deployment)
        self._groups.append(group)  # before starting: a process that fails to come up is stopped too
        names = names or ("channel", *deployment.facilities)
        for name in names:
            group.start(name, env=env)
        for name in names:
            group.wait_ready(name)
        return group

    def launch(self, **options: Any) -> ProcessGroup:
        """Write a deployment with `options` and start all its processes; its `deployment` is the group's."""
        return self.start(self.write(**options))

    def stop_all(self) -> None:
        """SIGTERM (then SIGKILL) every process started here, the newest group first. Stopping a group
        twice is harmless, so a test may stop its own before it checks what the processes left behind."""
        while self._groups:
            self._groups.pop().stop_all()
