"""Shared parts of the daemon harnesses (bench_latency, soak, fault_inject, fleet).

Everything here drives real parts: a real Mosquitto (``tests/support/mosquitto.py``),
``edge-agent run`` started as a user starts it (the venv's console script, a
real process that can be SIGKILLed and restarted on the same state folder),
phantom series written into its watch folder the way scanners write, and
paho clients on the broker.

* :class:`Template`, :func:`make_templates`, :func:`replay`: phantom series
  rendered once and replayed with fresh UIDs (same-length byte patch of
  Study/Series/FoR/SOP Instance UIDs), so rendering costs no CPU while the
  agent runs.
* :class:`AgentProcess`: the daemon, its RSS (process tree) sampled, with
  ``kill`` (SIGKILL), ``pause``/``resume`` (SIGSTOP/SIGCONT) and ``start``
  again on the same state.
* :class:`Subscriber`: stamps every message under ``edge-agent/#``.
* :class:`Consumer`: a consumer as docs/ALERTS.md describes one (persistent
  session, QoS 1, optionally in a ``$share`` group) that records every
  delivery, counts duplicates and sends receipts — at once, or late (a slow
  consumer).
* :func:`integrity`, :func:`ledger_files`, :func:`outbox_rows`: read-only
  looks into an agent's state folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from support.mosquitto import MosquittoBroker, free_port  # noqa: E402,F401  (re-exported)

from edge_agent.service.simulator import write_bytes  # noqa: E402

SITE, DEVICE = "bench", "ct1"
# A routine head series (5 mm, standard kernel, no motion or metal): one the ICH model applies to.
ROUTINE_HEAD = {"thickness_mm": 5.0, "force": {"kernel": "standard", "motion": False, "metal": False}}


def edge_agent_command() -> list[str]:
    """How a user starts the agent from this venv: its ``edge-agent`` console script."""
    script = Path(sys.executable).with_name("edge-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edge_agent"]


def machine_line() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem = psutil.virtual_memory().total / 2**30
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs ({cpu}), "
            f"{mem:.0f} GiB RAM, load avg {os.getloadavg()[0]:.2f}, Python {sys.version.split()[0]}")


# --- phantom templates and their replay -------------------------------------------------------
@dataclass
class Template:
    kind: str
    seed: int
    paths: list[Path]            # slice order (lowest position first)
    labels: list[bool]
    uids: list[list[str]]        # per file: the UIDs to patch (study, series, FoR, SOP)
    probs: np.ndarray | None = None
    positive: bool | None = None  # the offline (``infer``) decision on the whole series, when computed


@dataclass
class Sent:
    """One replayed series as delivered."""
    kind: str
    template: int
    series_uid: str
    folder: Path
    order: list[int] = field(default_factory=list)      # slice indices in delivery order
    done_at: list[float] = field(default_factory=list)  # completion time of each delivered file
    paths: list[Path] = field(default_factory=list)     # the delivered files


def make_templates(staging: Path, kinds: list[tuple[str, int]], slices: int, **phantom_kwargs) -> list[Template]:
    import pydicom

    from edge_agent.service.simulator import render

    out = []
    for kind, seed in kinds:
        phantom, paths = render(kind, seed, staging / f"{kind}-{seed}", slices=slices, **phantom_kwargs)
        uids = []
        for p in paths:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            uids.append([str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.FrameOfReferenceUID),
                         str(ds.SOPInstanceUID)])
        out.append(Template(kind, seed, paths, [bool(x) for x in phantom.slice_labels], uids))
    return out


def decide_templates(templates: list[Template], engines: Path | None = None) -> None:
    """Set each template's ``positive``: what ``infer`` (the whole series, the same models) decides."""
    from edge_agent.dicom import read_series
    from edge_agent.inference.models import ModelSet
    from edge_agent.service.analyse import analyse_series

    models = ModelSet.load(engines)
    try:
        for t in templates:
            result = analyse_series(read_series([t.paths[0].parent])[0], models)
            t.positive = any(f["positive"] for f in result["findings"])
    finally:
        models.close()


def patch(uid: str, replay: int, k: int) -> str:
    """Same-length new UID: the last 10 digits of the (38-digit) last component replaced."""
    return uid[:-10] + f"9{replay:05d}{k:04d}"


def replay_bytes(t: Template, replay_id: int) -> tuple[str, list[bytes]]:
    """The template's files with fresh UIDs for replay ``replay_id``: (series UID, bytes per slice)."""
    mapping: dict[str, str] = {}
    for uids in t.uids:
        for u in uids:
            mapping.setdefault(u, patch(u, replay_id, len(mapping)))
    out = []
    for i, path in enumerate(t.paths):
        data = path.read_bytes()
        for u in t.uids[i]:
            data = data.replace(u.encode(), mapping[u].encode())
        out.append(data)
    return mapping[t.uids[0][1]], out


def write_like_scanner(data: bytes, dst: Path, style: str, pause: float, staging: Path) -> float:
    """``simulator.write_bytes``: in place in two chunks, dot-temp + rename, or moved in from ``staging``.

    ``movein``: written (fsynced) into a folder beside the watch folder, then renamed into it — inotify
    reports only ``created`` for it (no ``closed``), the case the stable-file wait exists for.
    """
    return write_bytes(data, dst, style, pause, staging)


def replay(t: Template, index: int, replay_id: int, target: Path, rate: float, style: str,
           stop: threading.Event, staging: Path, on_file=None, on_start=None, *, before_file=None,
           folder_name: str | None = None) -> Sent:
    """Deliver one template as a new series, shuffled, at ``rate`` slices/s.

    ``before_file(sent, n)`` is called before the n-th file (0-based, delivery order) is written; it may
    block (a harness injecting a fault there) and may return a callable that writes the file itself
    (``writer(data, dst) -> completion time``) instead of the scanner-like write.
    """
    series_uid, files = replay_bytes(t, replay_id)
    folder = target / (folder_name or f"{t.kind}-{replay_id:05d}")
    folder.mkdir(parents=True, exist_ok=True)
    sent = Sent(t.kind, index, series_uid, folder)
    if on_start:
        on_start(sent)
    order = list(range(len(t.paths)))
    random.Random(replay_id).shuffle(order)
    interval = 1.0 / rate
    next_at = time.monotonic() + interval  # the cadence runs on across series
    for n, i in enumerate(order):
        if stop.is_set():
            break
        delay = next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        next_at += interval
        writer = before_file(sent, n) if before_file else None
        dst = folder / t.paths[i].name
        if writer is not None:
            done = writer(files[i], dst)
            next_at = max(next_at, time.monotonic() + interval)
        else:
            done = write_like_scanner(files[i], dst, style, min(0.05, interval / 4), staging)
        sent.order.append(i)
        sent.done_at.append(done)
        sent.paths.append(dst)
        if on_file:
            on_file(sent, done)
    return sent


def wait_until(predicate, timeout: float, period: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return bool(predicate())


def log_problems(log: Path) -> list[str]:
    """The agent's ERROR lines, quarantines and tracebacks."""
    return [line for line in log.read_text(errors="replace").splitlines()
            if " ERROR " in line or "quarantined" in line or "Traceback" in line]


# --- the agent ----------------------------------------------------------------------------------
class AgentProcess:
    """``edge-agent run`` as a user starts it, its RSS (process tree) sampled every ``period`` seconds.

    Started by the constructor (``start=False`` to start later); ``kill`` (SIGKILL), ``pause`` /
    ``resume`` (SIGSTOP / SIGCONT), ``stop`` (SIGTERM) and ``start`` again on the same folders. ``env``
    is added to the environment at every start; ``start(extra_env=...)`` adds more for that start only.
    """

    def __init__(self, root: Path, broker_url: str, settle: float, env: dict[str, str], engines: Path | None,
                 *, site: str = SITE, device: str = DEVICE, delivery: str = "broker", extra: tuple = (),
                 start: bool = True, state: Path | None = None, period: float = 1.0,
                 start_timeout: float = 120.0, verbose: bool = False):
        self.root = Path(root)
        self.watch, self.log = self.root / "incoming", self.root / "agent.log"
        self.state = Path(state) if state else self.root / "state"
        self.site, self.device = site, device
        self.watch.mkdir(parents=True, exist_ok=True)
        self.args = [*edge_agent_command(), *(["-v"] if verbose else []), "run", "--watch", str(self.watch),
                     "--state-dir", str(self.state), "--broker", broker_url, "--settle", str(settle), "--site", site,
                     "--device", device, "--delivery", delivery, *extra] + \
                    (["--engines", str(engines)] if engines else [])
        self.env = dict(os.environ, **{"EDGE_AGENT_MQTT_HEARTBEAT_INTERVAL": "1", **env})
        self.period, self.start_timeout = period, start_timeout
        self.samples: list[tuple[float, float, float, float]] = []  # (t, rss total MB, rss main MB, cpu s)
        self.proc: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None
        self.starts = self.kills = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self, extra_env: dict[str, str] | None = None) -> "AgentProcess":
        self.starts += 1
        with open(self.log, "a") as fh:
            self.proc = subprocess.Popen(self.args, stdout=fh, stderr=subprocess.STDOUT,
                                         env=dict(self.env, **(extra_env or {})))
        deadline = time.monotonic() + self.start_timeout
        while self.log.read_text(errors="replace").count("edge-agent running") < self.starts:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"the agent did not start:\n{tail}")
            time.sleep(0.1)
        self.ps = psutil.Process(self.proc.pid)
        self.sample()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample(self) -> None:
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
        while not self._stop.wait(self.period):
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

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit status. ``start`` may follow."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)   # a paused agent must see the SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        """Stop the agent and the sampler."""
        self.stop()
        self._stop.set()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


# --- broker traffic -------------------------------------------------------------------------------
def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://")[1].split(":")
    return host, int(port)


class Subscriber:
    """Stamps the arrival (``time.time()``) of every message on ``topics`` (and keeps the last status)."""

    def __init__(self, url: str, topics: tuple[str, ...] = ("edge-agent/#",), client_id: str = "bench-latency"):
        host, port = _host_port(url)
        self.lock = threading.Lock()
        self.messages: list[tuple[float, str, dict]] = []
        self.status: dict = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 2)
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        try:
            payload = json.loads(msg.payload) if msg.payload else {}
        except ValueError:
            return
        with self.lock:
            if msg.topic.endswith("/status"):
                self.status = payload
            else:
                self.messages.append((now, msg.topic, payload))

    def of(self, leaf: str) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, p) for t, topic, p in self.messages
                    if topic.startswith("edge-agent/") and topic.endswith("/" + leaf)]

    def first(self, leaf: str, series_uid: str) -> tuple[float, dict] | None:
        for t, p in self.of(leaf):
            uid = p.get("study", {}).get("series_instance_uid") or p.get("result", {}).get("series_instance_uid") \
                or p.get("series_instance_uid")
            if uid == series_uid:
                return t, p
        return None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Delivery:
    at: float
    topic: str
    alert_id: str
    revision: int
    state: str
    series_uid: str
    duplicate: bool


class Consumer:
    """A consumer as docs/ALERTS.md "Writing a consumer" describes: persistent session, QoS 1, receipts.

    ``group``: subscribe as ``$share/<group>/...``. Every delivery is recorded (``deliveries``); a repeat
    of an ``(alert_id, revision)`` already seen is a duplicate. Receipts go to the alert's topic with
    ``alerts`` → ``receipts``. Slow consumer: ``receipt_delay`` seconds before each receipt is sent (the
    agent republishes when it exceeds ``receipt_timeout``) and ``handle_delay`` seconds spent in each
    message callback (paho sends the PUBACK only after it returns, so the broker's in-flight window to
    this client fills). Both can be changed while it runs.
    """

    def __init__(self, url: str, name: str, *, topic: str = "edge-agent/+/+/alerts", group: str | None = None,
                 receipts: bool = True):
        self.name, self.group, self.receipts = name, group, receipts
        self.subscription = f"$share/{group}/{topic}" if group else topic
        self.receipt_delay = 0.0
        self.handle_delay = 0.0
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.seen: dict[tuple[str, int], int] = {}
        self.receipts_sent = 0
        self.connects = 0
        self._due: list[tuple[float, str, bytes]] = []
        self._wake = threading.Condition(self.lock)
        self._closing = False
        host, port = _host_port(url)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"harness-{name}", protocol=paho.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(host, port, clean_start=False, properties=props)
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name=f"receipts-{name}", daemon=True)
        self._sender.start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connects += 1
        client.subscribe(self.subscription, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            p = json.loads(msg.payload)
            key = (p["alert_id"], int(p["revision"]))
        except (ValueError, KeyError, TypeError):
            return
        if self.handle_delay:
            time.sleep(self.handle_delay)
        with self.lock:
            n = self.seen.get(key, 0)
            self.seen[key] = n + 1
            self.deliveries.append(Delivery(time.time(), msg.topic, key[0], key[1], p.get("state", "?"),
                                            p.get("study", {}).get("series_instance_uid", ""), n > 0))
            if self.receipts:
                self._due.append((time.monotonic() + self.receipt_delay, *self._receipt(msg.topic, *key)))
                self._wake.notify_all()

    def _receipt(self, alert_topic: str, alert_id: str, revision: int) -> tuple[str, bytes]:
        """(topic, payload) of the receipt for one alert revision: docs/ALERTS.md, edge-agent/receipt/1."""
        receipt = {"schema": "edge-agent/receipt/1", "alert_id": alert_id, "revision": revision,
                   "consumer": self.name, "received_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
        return alert_topic.rsplit("/", 1)[0] + "/receipts", json.dumps(receipt).encode()

    def _send_loop(self) -> None:
        with self.lock:
            while not self._closing:
                now = time.monotonic()
                ready = [d for d in self._due if d[0] <= now]
                self._due = [d for d in self._due if d[0] > now]
                for _, topic, payload in ready:
                    self.client.publish(topic, payload, qos=1)
                    self.receipts_sent += 1
                wait = min((d[0] for d in self._due), default=now + 0.5) - now
                self._wake.wait(max(0.01, min(wait, 0.5)))

    # --- what it got ----------------------------------------------------------------------------
    def keys(self) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.seen)

    def ids(self) -> set[str]:
        with self.lock:
            return {k[0] for k in self.seen}

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.seen.values())

    def latest(self) -> dict[str, Delivery]:
        """alert_id → the delivery of its highest revision."""
        out: dict[str, Delivery] = {}
        with self.lock:
            for d in self.deliveries:
                if d.alert_id not in out or d.revision > out[d.alert_id].revision:
                    out[d.alert_id] = d
        return out

    def resend_receipts(self) -> int:
        """Send a receipt for every (alert_id, revision) received so far (a consumer catching up)."""
        with self.lock:
            topics = {(d.alert_id, d.revision): d.topic for d in self.deliveries}
            for (alert_id, revision), topic in topics.items():
                self._due.append((time.monotonic(), *self._receipt(topic, alert_id, revision)))
            self._wake.notify_all()
            return len(topics)

    def pending_receipts(self) -> int:
        with self.lock:
            return len(self._due)

    def close(self) -> None:
        with self.lock:
            self._closing = True
            self._wake.notify_all()
        self._sender.join(5)
        self.client.loop_stop()
        self.client.disconnect()


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
