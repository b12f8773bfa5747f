"""``edge-agent run`` as a real process (tests and benchmarks), and read-only looks into its state folder.

The agent is started as a user starts it, on a watch folder and a state folder under ``root``; it can be
stopped (SIGTERM), killed (SIGKILL, as in a power cut), paused (SIGSTOP/SIGCONT) and started again on the
same folders. Optionally its RSS and CPU (the whole process tree: decode workers too) are sampled by a
daemon thread (``sample_every``; needs psutil, the ``test`` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.testing.processes import terminate

#: Short ingest/MQTT timers, so an agent in a test notices files, retries and heartbeats within a second or two.
FAST_ENV = {"EDGE_AGENT_INGEST_STABLE_SECONDS": "0.2", "EDGE_AGENT_INGEST_RETRY_TIMEOUT": "2",
            "EDGE_AGENT_MQTT_RECEIPT_TIMEOUT": "5", "EDGE_AGENT_MQTT_HEARTBEAT_INTERVAL": "2"}

#: Strings of the agent's logging that mark patient data (none may reach MQTT, logs or results).
PHI = ("PHANTOM^", "PatientName", "PatientID", "PatientBirthDate", "PatientSex")


class AgentDidNotStart(AssertionError, RuntimeError):
    """The agent exited or did not log "edge-agent running" in time (a test failure, a benchmark error)."""


class AgentDidNotStop(AssertionError):
    """The agent ignored SIGTERM for ``timeout`` seconds (it was then killed)."""


def python_command() -> list[str]:
    """``python -m edge_agent`` of this interpreter."""
    return [sys.executable, "-m", "edge_agent"]


def edge_agent_command() -> list[str]:
    """How a user starts the agent from this venv: its ``edge-agent`` console script."""
    script = Path(sys.executable).with_name("edge-agent")
    return [str(script)] if script.exists() else python_command()


class AgentProcess:
    """``edge-agent run`` as a subprocess, its output kept in ``root/agent.log``.

    ``extra``: more ``run`` arguments. ``env`` is added to the environment at every start;
    ``start(extra_env=...)`` adds more for that start only. ``command``: how to start it
    (default ``python -m edge_agent``; :func:`edge_agent_command` for the console script).
    ``strict_stop``: :meth:`stop` raises :class:`AgentDidNotStop` when SIGTERM was not enough
    (a test); else it kills quietly and returns the status (a benchmark reports it).
    """

    def __init__(self, root: Path, broker_url: str, *extra: str, settle: float = 1.5, env: dict | None = None,
                 engines: Path | None = None, site: str = "e2e", device: str = "ct1", delivery: str | None = None,
                 state: Path | None = None, command: list[str] | None = None, verbose: bool = True,
                 start_timeout: float = 60.0, stop_timeout: float = 30.0, sample_every: float | None = None,
                 strict_stop: bool = True) -> None:
        self.root = Path(root)
        self.watch, self.log = self.root / "incoming", self.root / "agent.log"
        self.state = Path(state) if state else self.root / "state"
        self.site, self.device = site, device
        self.watch.mkdir(parents=True, exist_ok=True)
        self.args = [*(command or python_command()), *(["-v"] if verbose else []), "run",
                     "--watch", str(self.watch), "--state-dir", str(self.state), "--broker", broker_url,
                     "--site", site, "--device", device, "--settle", str(settle),
                     *(["--delivery", delivery] if delivery else []), *extra,
                     *(["--engines", str(engines)] if engines else [])]
        self.env = dict(os.environ, **(env or {}))
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.sample_every, self.strict_stop = sample_every, strict_stop
        self.proc: subprocess.Popen | None = None
        self.ps = None   # psutil.Process while sampling
        self.samples: list[tuple[float, float, float, float]] = []  # (t, rss total MB, rss main MB, cpu s)
        self.starts = self.kills = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, extra_env: dict[str, str] | None = None) -> "AgentProcess":
        """Start (again, on the same folders); returns once it logged "edge-agent running" for this start."""
        self.starts += 1
        with open(self.log, "a") as fh:
            self.proc = subprocess.Popen(self.args, stdout=fh, stderr=subprocess.STDOUT,
                                         env=dict(self.env, **(extra_env or {})))
        deadline = time.monotonic() + self.start_timeout
        while self.log_text().count("edge-agent running") < self.starts:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rc = self.proc.poll()
                self.kill()
                raise AgentDidNotStart(f"the agent did not start (exit status {rc}):\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        if self.sample_every:
            import psutil

            self.ps = psutil.Process(self.proc.pid)
            self.sample()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
                self._thread.start()
        return self

    def sample(self) -> None:
        """One (time, RSS of the tree, RSS of the main process, CPU seconds) sample."""
        import psutil

        ps = self.ps
        if ps is None:
            return
        try:
            procs = [ps] + ps.children(recursive=True)
            rss = main = cpu = 0.0
            for p in procs:
                try:
                    r = p.memory_info().rss / 2**20
                    c = p.cpu_times()
                except psutil.Error:
                    continue
                rss += r
                cpu += c.user + c.system
                if p is ps:
                    main = r
            self.samples.append((time.time(), rss, main, cpu))
        except psutil.Error:
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.sample_every):
            if self.alive:
                self.sample()

    def kill(self) -> None:
        """SIGKILL the agent (its decode worker processes notice and exit on their own)."""
        if self.alive:
            self.proc.kill()
            self.proc.wait()
            self.kills += 1

    def pause(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``, default ``stop_timeout``); returns the exit status.

        ``start`` may follow.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)   # a paused agent must see the SIGTERM
            if not terminate(self.proc, timeout) and self.strict_stop:
                raise AgentDidNotStop(f"agent did not stop on SIGTERM:\n{self.log_text()}")
        return self.proc.returncode

    def close(self) -> None:
        """Stop the agent (quietly killed if it hangs) and the sampler."""
        strict, self.strict_stop = self.strict_stop, False
        try:
            self.stop()
        finally:
            self.strict_stop = strict
            self._stop.set()
            if self._thread is not None:
                self._thread.join(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, predicate, timeout: float = 90.0):
        """Until ``predicate(log text)`` is truthy (a str: is in the log); returns it. Fails if the agent exits first."""
        check = (lambda text: predicate in text) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check(self.log_text())
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the agent exited {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.2)
        raise AssertionError(f"not in the log within {timeout:.0f} s:\n{self.log_text()}")


def log_problems(log: Path) -> list[str]:
    """The agent's ERROR lines, quarantines and tracebacks."""
    return [line for line in Path(log).read_text(errors="replace").splitlines()
            if " ERROR " in line or "quarantined" in line or "Traceback" in line]


# --- the state folder, read-only ------------------------------------------------------------------
@contextlib.contextmanager
def _ro(path: Path):
    """A read-only connection, closed on exit (``with sqlite3.connect()`` only ends the transaction)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def integrity(state: Path) -> dict[str, str]:
    """``PRAGMA integrity_check`` of every ``*.sqlite3`` under ``state`` (read-only): name → "ok" or the error."""
    out = {}
    for db in sorted(Path(state).rglob("*.sqlite3")):
        try:
            with _ro(db) as conn:
                rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            out[db.name] = "ok" if rows == ["ok"] else "; ".join(rows)[:300]
        except sqlite3.Error as exc:
            out[db.name] = f"cannot check: {exc}"
    return out


def ledger_files(state: Path) -> dict[str, tuple[str, str | None, str | None]]:
    """path → (state, reason, series UID) from the agent's ledger."""
    db = Path(state) / "ledger.sqlite3"
    if not db.exists():
        return {}
    with _ro(db) as conn:
        rows = conn.execute("SELECT path, state, reason, series_instance_uid FROM files").fetchall()
    return {os.fsdecode(p) if isinstance(p, bytes) else p: (s, r, u) for p, s, r, u in rows}


def ledger_series_done(state: Path) -> set[str]:
    db = Path(state) / "ledger.sqlite3"
    if not db.exists():
        return set()
    with _ro(db) as conn:
        return {u for (u,) in conn.execute("SELECT series_instance_uid FROM series WHERE done = 1")}


@dataclass
class OutboxRow:
    kind: str
    key: str
    revision: int
    state: str
    attempts: int
    series_uid: str
    alert_state: str


def outbox_rows(state: Path) -> list[OutboxRow]:
    """Every alert and result row of the agent's outbox (read-only; [] when it does not exist yet)."""
    db = Path(state) / "outbox.sqlite3"
    if not db.exists():
        return []
    try:
        with _ro(db) as conn:
            rows = conn.execute("SELECT kind, message_key, revision, state, attempts, payload FROM outbox").fetchall()
    except sqlite3.Error:
        return []
    out = []
    for kind, key, revision, state_, attempts, payload in rows:
        try:
            p = json.loads(payload)
        except ValueError:
            p = {}
        uid = p.get("study", {}).get("series_instance_uid") or p.get("result", {}).get("series_instance_uid", "")
        out.append(OutboxRow(kind, key, revision, state_, attempts, uid, p.get("state", "")))
    return out
