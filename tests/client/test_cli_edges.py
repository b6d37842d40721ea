"""The rough edges of the `qlink` command line that need no daemon (issue 17, item 7): --version, a stdout
closed early, what the light commands import, files that exist under --out, and the data client's one
connection. Real subprocesses where the behaviour is the process's (exit status, imports, stdout)."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qlinkmed.client.cli import main
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.testbed.deployment import free_ports
from tests.polling import wait_for

QLINK = [sys.executable, "-m", "qlinkmed.client"]
HEAVY = ("numpy", "scipy", "qiskit", "qiskit_aer", "matplotlib", "pydicom", "fhir", "PIL")
KEY = bytes(range(32))


def test_version_prints_the_package_version_and_exits_0() -> None:
    proc = subprocess.run([*QLINK, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"qlink {version('qlinkmed')}\n"


def _closed_stdout(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `qlink ARGS` with a stdout pipe whose reader is already gone: every write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [*QLINK, *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
            cwd=cwd,
        )
    finally:
        os.close(write)


def test_a_closed_stdout_exits_141_quietly(tmp_path: Path) -> None:
    # Regression: `qlink inbox list | head` printed a BrokenPipeError traceback. `testbed init` prints a
    # screenful without a daemon (the inbox case against a daemon is in test_cli_data.py).
    proc = _closed_stdout("testbed", "init", str(tmp_path / "tb"))
    assert (proc.returncode, proc.stderr) == (141, "")
    assert (tmp_path / "tb" / "hospital-a.toml").exists()  # the work was done; only the output was lost
    proc = _closed_stdout("--version")
    assert (proc.returncode, proc.stderr) == (141, "")


def _facility_config(tmp_path: Path) -> Path:
    """A facility configuration naming a daemon that is not running (its port free), with a token."""
    (port,) = free_ports(1)
    state = tmp_path / "state"
    state.mkdir()
    (state / "local-api.token").write_text("t" * 43 + "\n")
    config = tmp_path / "facility.toml"
    config.write_text(
        f'[facility]\nid = "hospital-a"\nstate_dir = "state"\n[listen]\nlocal = "127.0.0.1:{port}"\n'
    )
    return config


@pytest.mark.parametrize(
    "args",
    [
        ["ehr", "send", "--help"],
        ["status", "--help"],
        ["ehr", "send", "--to", "hospital-b", "MESSAGE", "--config", "CONFIG"],
        ["status", "--config", "CONFIG"],
        ["keys", "--config", "CONFIG"],
        ["inbox", "list", "--config", "CONFIG", "--user-token-file", "TOKEN"],
    ],
)
def test_light_commands_import_no_heavy_module(args: list[str], tmp_path: Path) -> None:
    # Regression: `qlink ehr send` imported pydicom, fhir.resources and numpy (the content checks, the
    # whole configuration model): 0.6 s of its 0.8-1.1 s a call.
    config = _facility_config(tmp_path)
    message = tmp_path / "oru.hl7"
    message.write_bytes(b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5\r")
    token = tmp_path / "user.token"
    token.write_text("a-user-token\n")
    argv = [{"CONFIG": str(config), "MESSAGE": str(message), "TOKEN": str(token)}.get(a, a) for a in args]
    code = (
        "import sys\nfrom qlinkmed.client.cli import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    last = proc.stderr.strip().splitlines()[-1]
    # --help exits 0; against the stopped daemon each command fails to reach it (1), having read the
    # configuration and the token and, for ehr send, the message.
    assert last == f"{0 if '--help' in args else 1} []", proc.stderr
    if "--help" not in args:
        assert "cannot reach qlinkd" in proc.stderr


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.bin"
    path.write_bytes(KEY)
    return path


def _refuses_then_forces(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`qlink ARGV` leaves an existing OUT alone (exit 2, one line), and replaces it with --force."""
    out.write_bytes(b"keep me")
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"qlink image {argv[1]}: error: --out: {out} exists; add --force to replace it\n"
    assert out.read_bytes() == b"keep me"
    assert main([*argv, "--force"]) == 0
    assert out.read_bytes() != b"keep me"


def test_image_commands_refuse_an_existing_output_unless_forced(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: `qlink image encrypt` (and decrypt) replaced --out silently.
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    source, cipher, plain = tmp_path / "in.npy", tmp_path / "c.qimg", tmp_path / "out.npy"
    np.save(source, pixels)
    key = ["--key-file", str(key_file)]
    _refuses_then_forces(["image", "encrypt", str(source), *key, "--out", str(cipher)], cipher, capsys)
    _refuses_then_forces(["image", "decrypt", str(cipher), *key, "--out", str(plain)], plain, capsys)
    assert np.array_equal(np.load(plain), pixels)
    # Nothing left beside the outputs (the temporary files are gone whichever way each run ended).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qimg", "in.npy", "key.bin", "out.npy"]


class _Counting(http.server.BaseHTTPRequestHandler):
    """An HTTP/1.1 server of the standard library's, not ours: JSON for every GET, and it counts the
    connections it accepts and the ones it has closed. `timeout` (None: none) closes an idle connection,
    as a daemon's keep-alive timeout does."""

    protocol_version = "HTTP/1.1"
    connections = 0
    closed = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def finish(self) -> None:
        super().finish()
        type(self).closed += 1

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def counting_server() -> Iterator[http.server.ThreadingHTTPServer]:
    _Counting.connections = _Counting.closed = 0
    _Counting.timeout = None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_one_target_sends_its_requests_over_one_connection(
    counting_server: http.server.ThreadingHTTPServer,
) -> None:
    target = DataTarget(f"http://127.0.0.1:{counting_server.server_address[1]}", "token")
    try:
        answers = [target.json("GET", f"/v1/limits?n={i}")[1]["path"] for i in range(3)]
    finally:
        target.close()
    assert answers == [f"/v1/limits?n={i}" for i in range(3)]
    assert _Counting.connections == 1


def test_a_kept_connection_the_server_closed_while_idle_is_replaced(
    counting_server: http.server.ThreadingHTTPServer,
) -> None:
    _Counting.timeout = 0.2
    target = DataTarget(f"http://127.0.0.1:{counting_server.server_address[1]}", "token")
    try:
        assert target.json("GET", "/v1/limits")[0] == 200
        wait_for(lambda: _Counting.closed == 1, "the server closing the idle connection")
        # Sent on the closed connection, this request would fail ("cannot reach"): a new one is opened.
        assert target.json("GET", "/v1/limits") == (200, {"path": "/v1/limits"})
    finally:
        target.close()
    assert _Counting.connections == 2


def test_a_transfer_id_is_sent_whole_whatever_it_holds(
    counting_server: http.server.ThreadingHTTPServer,
) -> None:
    # Regression: an id with a space failed in http.client ("cannot reach qlinkd"), and "../x" was
    # resolved into another route; each must reach the inbox route as one segment.
    target = DataTarget(f"http://127.0.0.1:{counting_server.server_address[1]}", "token")
    try:
        paths = [target.json("GET", path)[1]["path"] for path in ("/v1/inbox/a b", "/v1/inbox/../x/files/0")]
    finally:
        target.close()
    assert paths == ["/v1/inbox/a%20b", "/v1/inbox/%2E%2E%2Fx/files/0"]


def _submit_alice(service: Any, round_id: int, *, decoy: bool) -> None:
    """Alice's pulses of one round, as the channel service receives them: decoy classes or none."""
    import qlinkmed.qlinkd.link.messages as lm
    from qlinkmed.qlinkd.channel.broker import LinkKey

    n = 16
    train = lm.PulseTrain(
        bits=np.zeros(n, dtype=np.uint8),
        bases=np.zeros(n, dtype=np.uint8),
        intensities=np.zeros(n, dtype=np.uint8) if decoy else None,
        mu=(0.5, 0.1, 0.0002) if decoy else None,
    )
    link = LinkKey(alice="hospital-a", bob="hospital-b")
    assert service.broker.submit(link, "bb84", "alice", round_id, train) is None  # held for Bob's


@pytest.mark.asyncio
async def test_pns_is_attached_only_where_pulses_hold_several_photons(tmp_path: Path) -> None:
    # Regression: `qlink eve attach --kind pns` was accepted on single-photon links, where it does nothing.
    from aiohttp.test_utils import TestServer

    from qlinkmed.qlinkd.channel.admin import admin_app
    from qlinkmed.qlinkd.channel.config import load_channel_config
    from qlinkmed.qlinkd.channel.service import ChannelService
    from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment

    write_loopback_deployment(tmp_path / "tb")
    service = ChannelService(load_channel_config(tmp_path / "tb" / "channel.toml"))
    token = tmp_path / "admin.token"
    token.write_text("admin-token-" + "x" * 32)
    async with TestServer(admin_app(service, token.read_text()), host="127.0.0.1") as server:
        argv = ["eve", "attach", "--kind", "pns", "--admin", f"http://127.0.0.1:{server.port}"]
        argv += ["--token-file", str(token), "--json"]

        async def attach() -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                *QLINK, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, (out + err).decode()

        code, text = await attach()
        assert code == 2 and "no link has sent pulses yet" in text
        _submit_alice(service, 1, decoy=False)
        code, text = await attach()
        assert code == 2 and "hospital-a--hospital-b single-photon" in text
        assert not service.broker.eve.active
        _submit_alice(service, 2, decoy=True)
        code, text = await attach()
        assert code == 0, text
        assert json.loads(text)["eve"] == {"kind": "pns", "fraction": 1.0}
        assert json.loads(text)["sources"] == {"hospital-a--hospital-b": "wcp"}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-", "-"], "- (stdin) may be given once"),
        (["--name", "a.hl7", "msg.hl7"], "--name names the message read from stdin"),
    ],
)
def test_ehr_send_stdin_usage_errors_exit_2(
    args: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cli import qlink

    config = _facility_config(tmp_path)  # its daemon is not running: a usage error must come first
    code, out, err = qlink(capsys, "ehr", "send", "--to", "hospital-b", *args, "--config", str(config))
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert line.startswith(f"qlink ehr send: error: {named}")
