"""sd_notify over a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from edge_agent.service.systemd import SystemdNotifier, notify, watchdog_interval


class NotifySocket:
    """A bound AF_UNIX datagram socket, like the one systemd passes in $NOTIFY_SOCKET."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"edge-agent-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.env = "@" + name
            self._dir = None
        else:
            # tmp_path can exceed the 108-byte sun_path limit; keep it short.
            self._dir = tempfile.mkdtemp(prefix="sdn-")
            path = os.path.join(self._dir, "notify")
            self.sock.bind(path)
            self.env = path
        self.sock.settimeout(2.0)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self, seconds: float) -> list[str]:
        """Every datagram that arrives within ``seconds``."""
        got = []
        self.sock.settimeout(0.02)
        deadline = threading.Event()
        timer = threading.Timer(seconds, deadline.set)
        timer.name = "test-drain-timer"
        timer.start()
        try:
            while not deadline.is_set():
                try:
                    got.append(self.sock.recv(4096).decode())
                except socket.timeout:
                    pass
        finally:
            timer.cancel()
            timer.join()
            self.sock.settimeout(2.0)
        return got

    def close(self) -> None:
        self.sock.close()
        if self._dir:
            Path(self._dir, "notify").unlink(missing_ok=True)
            os.rmdir(self._dir)


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def systemd_socket(request, monkeypatch):
    sock = NotifySocket(abstract=request.param)
    monkeypatch.setenv("NOTIFY_SOCKET", sock.env)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def test_not_under_systemd_is_a_quiet_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    notifier = SystemdNotifier()
    assert notifier.ready("up") is False and not notifier.under_systemd


def test_unusable_socket_returns_false(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify("READY=1") is False


def test_datagrams_arrive(systemd_socket):
    notifier = SystemdNotifier()
    assert notifier.ready("watching /srv/in\nwith a second line")
    assert systemd_socket.receive() == "READY=1\nSTATUS=watching /srv/in with a second line"
    assert notifier.status("3 series open")
    assert systemd_socket.receive() == "STATUS=3 series open"
    assert notifier.stopping()
    assert systemd_socket.receive() == "STOPPING=1"


def test_watchdog_interval_from_environment(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # inherited from a parent
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog_interval() is None


def test_watchdog_pings_only_while_healthy(systemd_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a ping every 0.1 s
    healthy = threading.Event()
    healthy.set()
    notifier = SystemdNotifier(health=healthy.is_set)
    assert notifier.interval == pytest.approx(0.2)
    notifier.start()
    try:
        got = systemd_socket.drain(0.55)
        assert 3 <= got.count("WATCHDOG=1") <= 8, got  # ~6 expected; a busy CI box is slower

        healthy.clear()
        systemd_socket.drain(0.15)  # a ping already on its way may still land
        got = systemd_socket.drain(0.5)
        assert "WATCHDOG=1" not in got, got

        healthy.set()
        got = systemd_socket.drain(0.35)
        assert got.count("WATCHDOG=1") >= 2, got
        assert "STATUS=running" in got
    finally:
        notifier.stop()
    assert notifier.pings >= 5


def test_unhealthy_status_is_sent_once(systemd_socket):
    notifier = SystemdNotifier(health=lambda: False, interval=0.1)
    notifier.start()
    try:
        got = systemd_socket.drain(0.4)
    finally:
        notifier.stop()
    assert [g for g in got if g.startswith("STATUS=unhealthy")] == [got[0]]
    assert len(got) == 1 and notifier.pings == 0


def test_a_raising_health_check_counts_as_unhealthy(systemd_socket):
    def broken() -> bool:
        raise RuntimeError("boom")

    notifier = SystemdNotifier(health=broken, interval=0.1)
    notifier.start()
    try:
        got = systemd_socket.drain(0.3)
    finally:
        notifier.stop()
    assert "WATCHDOG=1" not in got and got and got[0].startswith("STATUS=unhealthy")


def test_no_watchdog_no_thread(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    before = threading.active_count()
    notifier = SystemdNotifier()
    notifier.start()
    assert threading.active_count() == before
    notifier.stop()


# -- the deployment files in jetson/ speak the same protocol ------------------

REPO = Path(__file__).resolve().parents[2]
JETSON = REPO / "jetson"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (JETSON / "edge-agent.service").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_type_notify_with_watchdog_and_hardening():
    unit = unit_settings()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    watchdog = int(unit["WatchdogSec"][0])
    assert 10 <= watchdog <= 300
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    assert "PrivateDevices" not in unit  # it would hide the Jetson's GPU
    writable = unit["ReadWritePaths"][0].split()
    assert "/var/lib/edge-agent" in writable and "/srv/edge-agent" in writable
    assert unit["User"] == ["edge-agent"]
    exec_start = unit["ExecStart"][0].split()
    assert exec_start[0] == "/opt/edge-agent/venv/bin/edge-agent" and "run" in exec_start
    assert exec_start[exec_start.index("--config") + 1] == "/etc/edge-agent/config.toml"


@pytest.mark.skipif(not Path("/usr/bin/systemd-analyze").exists(), reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify():
    import subprocess

    proc = subprocess.run(["systemd-analyze", "verify", str(JETSON / "edge-agent.service")],
                          capture_output=True, text=True, timeout=60)
    # The only complaint allowed here: the venv's executable is not installed on this machine.
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert not problems, problems


def test_example_config_loads_and_matches_the_unit():
    from edge_agent.config import load_config

    cfg = load_config(JETSON / "config.example.toml", environ={})
    writable = unit_settings()["ReadWritePaths"][0].split()
    assert str(cfg.state_dir) in writable
    assert any(cfg.ingest.watch.startswith(p + "/") for p in writable)
    assert cfg.dicom.port == 11112 and cfg.metrics.port == 9108
    assert cfg.metrics.max_stage_age <= int(unit_settings()["WatchdogSec"][0])


def test_example_config_lists_every_key():
    import dataclasses

    from edge_agent.config import Config, load_file

    example = load_file(JETSON / "config.example.toml")
    defaults = Config()
    for section in dataclasses.fields(Config):
        if section.name == "models":  # [models.<name>] tables, one per model, not a fixed section
            continue
        keys = {f.name for f in dataclasses.fields(getattr(defaults, section.name))}
        assert set(example.get(section.name, {})) == keys, f"jetson/config.example.toml [{section.name}] is stale"


def test_installer_dry_run_changes_nothing(tmp_path):
    import subprocess

    prefix, watch = tmp_path / "opt" / "edge-agent", tmp_path / "srv" / "incoming"
    proc = subprocess.run(
        ["bash", str(JETSON / "install.sh"), "--dry-run", "--prefix", str(prefix), "--watch", str(watch),
         "--source", str(REPO), "--python", sys.executable],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"-m venv --system-site-packages {prefix}/venv" in out
    assert f"pip install --upgrade {REPO}[jetson]" in out
    assert "fs.inotify.max_user_watches = " in out
    assert f"ExecStart={prefix}/venv/bin/edge-agent" in out  # the unit follows --prefix
    assert f'watch = "{watch}"' in out  # and the config follows --watch
    assert "+ systemctl enable edge-agent.service" in out
    assert not prefix.exists() and not watch.exists()


def test_installer_refuses_unknown_options():
    import subprocess

    proc = subprocess.run(["bash", str(JETSON / "install.sh"), "--frobnicate"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "unknown option '--frobnicate'" in proc.stderr
