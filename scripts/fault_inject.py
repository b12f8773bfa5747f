"""Fault injection (issue 16 §3): seeded faults against a real Mosquitto and a real ``edge-agent run``.

Each run starts a fresh Mosquitto (persistence on, ``autosave_interval 1``),
a consumer that does what docs/ALERTS.md asks of one (persistent session,
QoS 1, a receipt for every delivery, duplicates counted) and one agent in
receipt mode (``edge-agent run --delivery receipt``, the venv's console script,
1 decode worker), then runs these phases, each on phantom head series
(bleeds and normals, 10 slices of 256², written like a scanner in place,
by rename or moved in; which template, which style and every moment below
come from the run's seed):

* ``broker``: SIGKILL and restart of Mosquitto, 2 times while two series are
  delivered and their alerts published (down 0.3–2 s).
* ``agent``: SIGKILL of the agent at a seeded moment, then restart on the same
  state, cycling over the runs through
  ``commit→publish`` (a watcher polls ``outbox.sqlite3`` read-only every 2 ms;
  the moment a new alert row appears that the consumer has not received, the
  agent is SIGSTOPped, the row's state read — ``pending``: committed, not yet
  published, the window hit — and the agent SIGKILLed),
  ``mid-series`` (after a seeded number of the series' files),
  ``mid-file`` (with a file half written; the rest is written while the agent
  is down, or after it is back) and
  ``commit→publish, broker down`` (the broker is killed first, so the alert
  can only be committed; SIGKILL once its row is in the outbox).
  Two kills per run (one with ``--quick``). ``PRAGMA integrity_check`` runs on
  every ``*.sqlite3`` right after each SIGKILL.
* ``watch``: the watch folder is removed (``rm -rf``) and recreated 0.5–3 s
  later; a bleed series sent into the new folder must alert.
* ``slow``: the consumer sends each receipt 2–3 receipt timeouts late and
  spends 0.1–0.5 s in each message callback (its PUBACKs come late too),
  then recovers.
* ``clock``: the agent is restarted with ``scripts/clockstep.c`` preloaded
  (compiled here with gcc), which steps only its wall clock (CLOCK_REALTIME)
  as an NTP step does: +1 h in the middle of one bleed series; then −2 h
  (to 1 h behind) while the next one's alert waits for a receipt the
  consumer did not send (it took the alert and "crashed"): the agent must
  republish within a few receipt timeouts; then a restart on the real clock
  (+1 h). libfaketime is not used: Debian's 0.9.10 breaks Python 3.11
  (``time.sleep`` EINVAL, libfaketime#426; threading waits hang).
* ``disk``: the state folder is a 48 MiB tmpfs mounted here (root only);
  it is filled to ENOSPC, a bleed series is sent, 4–8 s later the filler is
  removed and another bleed series sent. What happens is reported (both must
  alert for the run to pass).
* ``final``: a bleed series sent at the end must alert.

If the agent process exits on its own it is restarted 1 s later, as systemd
(``Restart=on-failure``) would; each such exit is reported (a violation
outside the ``disk`` phase).

Checks at the end of each run (a failed one is a violation; exit status 1):
every input file accounted for (ledger: accepted, duplicate, excluded or
quarantined; files removed with the watch folder were accounted just
before), every series final in the ledger with its result delivered (the
outbox row ``done``), every alert raised (an outbox row) receipted (``done``)
and at the consumer in its latest revision, every bleed series with a
``final`` alert and no normal series with one (the decision ``infer`` makes
on the whole series, offline), ``integrity_check`` ok on every
``*.sqlite3`` in the state folder, no ``Exception in thread`` in the log, a
clean SIGTERM exit (status 0). Duplicates (deliveries of an
``(alert_id, revision)`` already received) are counted, not violations:
delivery is at-least-once.

    .venv/bin/python scripts/fault_inject.py --seed 1 --runs 10     # docs/RELIABILITY.md figures
    .venv/bin/python scripts/fault_inject.py --quick                # CI: 2 runs of broker, agent, final
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _harness import (ROOT, ROUTINE_HEAD, Consumer, MosquittoBroker, Sent, Template,  # noqa: E402
                      decide_templates, integrity, ledger_files, ledger_series_done, machine_line, make_templates,
                      outbox_rows, replay, start_agent)

MOMENTS = ("commit→publish", "mid-series", "mid-file", "commit→publish, broker down")
PHASES = ("broker", "agent", "watch", "slow", "clock", "disk", "final")
QUICK_PHASES = ("broker", "agent", "final")
RECEIPT_TIMEOUT = 3.0
AGENT_ENV = {
    "EDGE_AGENT_INGEST_STABLE_SECONDS": "0.3",
    "EDGE_AGENT_INGEST_RETRY_TIMEOUT": "10",
    "EDGE_AGENT_INGEST_RESCAN_INTERVAL": "2",
    "EDGE_AGENT_INGEST_WORKERS": "1",
    "EDGE_AGENT_INFERENCE_THREADS": "1",
    "EDGE_AGENT_MQTT_RECEIPT_TIMEOUT": str(RECEIPT_TIMEOUT),
    "EDGE_AGENT_MQTT_HEARTBEAT_INTERVAL": "5",
}
ANALYSED = ("accepted", "duplicate")


class Violation(Exception):
    pass


def build_clockstep(work: Path) -> Path | None:
    out = work / "clockstep.so"
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(out), str(ROOT / "scripts" / "clockstep.c"),
                           "-ldl"], capture_output=True, text=True)
    return out if proc.returncode == 0 else None


class Run:
    """One seeded run: a fresh broker, consumer and agent, the phases, then the checks."""

    def __init__(self, n: int, seed: int, args, templates: list[Template], work: Path, clockstep: Path | None):
        self.n, self.seed, self.args, self.templates = n, seed, args, templates
        self.rng = random.Random(seed)
        self.dir = work / f"run{n:02d}"
        self.dir.mkdir(parents=True)
        self.clockstep = clockstep
        self.bleeds = [i for i, t in enumerate(templates) if t.positive]
        self.normals = [i for i, t in enumerate(templates) if t.positive is False]
        self.sent: list[Sent] = []
        self.removed: dict[str, str | None] = {}   # path → ledger state just before the watch folder went
        self.faults: Counter = Counter()
        self.notes: list[str] = []
        self.violations: list[str] = []
        self.exits: list[str] = []
        self.moments: list[str] = []
        self.window: list[str] = []
        self.phase = "setup"
        self.next_replay = 1000 * (n + 1)
        self.down = False            # the agent is down on purpose (no systemd-like restart)
        self.tmpfs: Path | None = None
        self.disk: dict = {}
        self.clock: dict = {}
        self.t0 = time.monotonic()
        self.broker = self.consumer = self.agent = None

    def setup(self) -> None:
        args = self.args
        self.broker = MosquittoBroker(self.dir / "mqtt", persistence=True, autosave_interval=1).start()
        self.consumer = Consumer(self.broker.url, f"fi-{self.seed}")
        state = self.dir / "agent" / "state"
        if "disk" in args.phases:
            state.mkdir(parents=True)
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(state)],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                self.tmpfs = state
            else:
                self.notes.append(f"disk phase not run: mount tmpfs failed ({proc.stderr.strip() or proc.returncode})")
        self.agent = start_agent(self.dir / "agent", self.broker.url, args.settle, AGENT_ENV, args.engines,
                                  site="fi", device=f"run{self.n:02d}", delivery="receipt", verbose=True, state=state)

    # --- delivering series ----------------------------------------------------------------------
    def pick(self, positive: bool) -> int:
        return self.rng.choice(self.bleeds if positive else self.normals)

    def send(self, positive: bool, before_file=None, rate: float | None = None) -> Sent:
        ti = self.pick(positive)
        style = self.rng.choice(("inplace", "rename", "movein"))
        rid = self.next_replay
        self.next_replay += 1
        s = replay(self.templates[ti], ti, rid, self.agent.watch, rate or self.args.rate, style, threading.Event(),
                   self.dir / "staging", before_file=before_file)
        self.sent.append(s)
        return s

    def send_async(self, positives: list[bool]) -> threading.Thread:
        th = threading.Thread(target=lambda: [self.send(p) for p in positives], name="scanner")
        th.start()
        return th

    # --- the agent as systemd keeps it ----------------------------------------------------------
    def supervise(self) -> None:
        if self.down or self.agent.alive or self.agent.proc is None:
            return
        rc = self.agent.proc.returncode
        tail = [line for line in self.agent.log_text().splitlines()[-15:] if line.strip()]
        self.exits.append(f"{self.phase}: exited with status {rc}; last log line: {tail[-1][:200] if tail else '-'}")
        if self.phase != "disk":
            self.violations.append(f"the agent exited on its own with status {rc} in the {self.phase} phase")
        time.sleep(1.0)
        try:
            self.agent.start()
        except RuntimeError as exc:
            self.exits.append(f"{self.phase}: restart failed: {str(exc)[-300:]}")

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.supervise()
            if predicate():
                return True
            time.sleep(0.2)
        return bool(predicate())

    def kill_agent(self, why: str) -> None:
        self.down = True
        self.agent.kill()
        self.faults["agent SIGKILL"] += 1
        for name, verdict in integrity(self.agent.state).items():
            if verdict != "ok":
                self.violations.append(f"{name} after SIGKILL ({why}): integrity_check {verdict}")

    def start_agent(self, extra_env: dict | None = None) -> None:
        self.agent.start(extra_env)
        self.down = False

    # --- what "settled" means ---------------------------------------------------------------------
    def settled(self, series: list[Sent]) -> bool:
        done = ledger_series_done(self.agent.state)
        if not all(s.series_uid in done for s in series):
            return False
        uids = {s.series_uid for s in series}
        rows = [r for r in outbox_rows(self.agent.state) if r.series_uid in uids]
        if any(r.state != "done" for r in rows):
            return False
        got = self.consumer.keys()
        if any(r.kind == "alert" and (r.key, r.revision) not in got for r in rows):
            return False
        latest = {d.series_uid: d.state for d in self.consumer.latest().values()}
        return all(latest.get(s.series_uid) == "final" for s in series if self.templates[s.template].positive)

    def wait_settled(self, series: list[Sent], timeout: float = 90) -> bool:
        ok = self.wait(lambda: self.settled(series), timeout)
        if not ok:
            self.notes.append(f"{self.phase}: not settled within {timeout:.0f} s")
        return ok

    # --- phases ---------------------------------------------------------------------------------------
    def phase_broker(self) -> None:
        kills = 1 if self.args.quick else 2
        span = 2 * 10 / self.args.rate + self.args.settle + 1.5
        at = sorted(self.rng.uniform(0.2, span) for _ in range(kills))
        first = len(self.sent)
        scanner = self.send_async([True, False])
        t0 = time.monotonic()
        for t in at:
            time.sleep(max(0.0, t0 + t - time.monotonic()))
            self.broker.crash()
            self.faults["broker SIGKILL"] += 1
            time.sleep(self.rng.uniform(0.3, 2.0))
            self.broker.start()
        scanner.join()
        self.wait_settled(self.sent[first:])

    def phase_agent(self, moment: str) -> None:
        self.moments.append(moment)
        rng = self.rng
        slices = len(self.templates[0].paths)
        if moment == "mid-series":
            k = rng.randint(1, slices - 2)

            def before(sent, n):
                if n == k:
                    self.kill_agent(f"mid-series after {k} files")
            s = self.send(True, before_file=before)
            time.sleep(rng.uniform(0.0, 2.0))
            self.start_agent()
        elif moment == "mid-file":
            k = rng.randint(0, slices - 1)
            early = rng.random() < 0.5   # restart before the rest of the file is written

            def before(sent, n):
                if n != k:
                    return None

                def writer(data: bytes, dst: Path) -> float:
                    cut = rng.randint(256, len(data) - 1)
                    with open(dst, "wb") as fh:
                        fh.write(data[:cut])
                        fh.flush()
                        os.fsync(fh.fileno())
                        self.kill_agent(f"mid-file at byte {cut} of {len(data)}")
                        if early:
                            self.start_agent()
                            time.sleep(rng.uniform(0.0, 1.0))
                        fh.write(data[cut:])
                    return time.time()
                return writer
            s = self.send(True, before_file=before)
            self.moments[-1] += " (rest after restart)" if early else " (rest while down)"
            if not early:
                time.sleep(rng.uniform(0.0, 2.0))
                self.start_agent()
        elif moment == "commit→publish":
            hit: dict = {}
            stop = threading.Event()
            seen_before = self.consumer.keys()

            def watch() -> None:
                path = self.agent.state / "outbox.sqlite3"
                conn = None
                while not stop.is_set():
                    try:
                        if conn is None:
                            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
                        rows = conn.execute("SELECT message_key, revision FROM outbox WHERE kind='alert'").fetchall()
                    except sqlite3.Error:
                        if conn is not None:
                            conn.close()
                        conn = None
                        time.sleep(0.01)
                        continue
                    new = [r for r in rows if tuple(r) not in seen_before]
                    if new and tuple(new[0]) not in self.consumer.keys():
                        self.agent.pause()
                        key, rev = new[0]
                        state = conn.execute("SELECT state FROM outbox WHERE message_key=?", (key,)).fetchone()[0]
                        hit.update(state=state, at_consumer=(key, rev) in self.consumer.keys(), revision=rev)
                        self.kill_agent("commit→publish")
                        conn.close()
                        return
                    time.sleep(0.002)
                if conn is not None:
                    conn.close()
            watcher = threading.Thread(target=watch, name="outbox-watch")
            watcher.start()
            s = self.send(True)
            watcher.join(self.args.settle + 15)
            stop.set()
            watcher.join()
            if not hit:
                self.kill_agent("commit→publish (no new alert row seen)")
                self.window.append("no new alert row seen; killed after the series")
            else:
                where = {"pending": "committed, not published", "inflight": "published, no PUBACK",
                         "acked": "PUBACKed, no receipt"}.get(hit["state"], hit["state"])
                if hit["at_consumer"]:
                    where += ", already at the consumer"
                self.window.append(f"rev {hit['revision']} {where}")
            time.sleep(rng.uniform(0.0, 1.0))
            self.start_agent()
        else:  # commit→publish, broker down
            self.broker.crash()
            self.faults["broker SIGKILL"] += 1
            s = self.send(True)
            got = self.wait(lambda: any(r.kind == "alert" and r.series_uid == s.series_uid
                                        for r in outbox_rows(self.agent.state)), self.args.settle + 20)
            states = [r.state for r in outbox_rows(self.agent.state) if r.series_uid == s.series_uid
                      and r.kind == "alert"]
            self.kill_agent("commit→publish, broker down")
            self.window.append(f"broker down: alert row {states[0] if got else 'never appeared'}")
            time.sleep(rng.uniform(0.2, 1.5))
            self.broker.start()
            self.start_agent()
        self.wait_settled([s])

    def phase_watch(self) -> None:
        self.wait_settled(self.sent)
        files = ledger_files(self.agent.state)
        for s in self.sent:
            for p in s.paths:
                self.removed[str(p)] = files.get(os.path.realpath(p), (None,))[0]
        shutil.rmtree(self.agent.watch)
        self.faults["watch folder removed"] += 1
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.agent.watch.mkdir()
        s = self.send(True)
        self.wait_settled([s])

    def phase_slow(self) -> None:
        self.consumer.receipt_delay = self.rng.uniform(2.0, 3.0) * RECEIPT_TIMEOUT
        self.consumer.handle_delay = self.rng.uniform(0.1, 0.5)
        self.faults["slow consumer"] += 1
        first = len(self.sent)
        self.send(True)
        self.send(False)
        uid = self.sent[first].series_uid
        republished = self.wait(lambda: any(r.kind == "alert" and r.series_uid == uid and r.attempts >= 2
                                            for r in outbox_rows(self.agent.state)), 30)
        self.notes.append(f"slow consumer: {'republished before the late receipt' if republished else 'no republish'}")
        self.consumer.receipt_delay = self.consumer.handle_delay = 0.0
        self.wait_settled(self.sent[first:])

    def phase_clock(self) -> None:
        if self.clockstep is None:
            self.notes.append("clock phase not run: no C compiler for scripts/clockstep.c")
            return
        rc = self.agent.stop()
        if rc != 0:
            self.violations.append(f"SIGTERM before the clock phase: exit status {rc}")
        offset = self.dir / "clock-offset"
        offset.write_text("0")
        log_at = len(self.agent.log_text())
        self.start_agent({"LD_PRELOAD": str(self.clockstep), "CLOCKSTEP_FILE": str(offset)})
        # +1 h in the middle of a series.
        k = self.rng.randint(1, len(self.templates[0].paths) - 2)

        def forward(sent, n):
            if n == k:
                offset.write_text("3600")
                self.faults["clock step"] += 1
        s = self.send(True, before_file=forward)
        self.wait_settled([s])
        # −2 h while an alert waits for its receipt: the consumer got it but its receipt was lost (it
        # crashed before sending one), so the agent must republish after receipt_timeout.
        self.consumer.receipts = False
        s = self.send(True)
        self.wait(lambda: any(d.series_uid == s.series_uid and d.state == "final"
                              for d in self.consumer.latest().values()), 30)
        offset.write_text("-3600")
        self.faults["clock step"] += 1
        self.consumer.receipts = True
        stepped = time.monotonic()
        limit = 6 * RECEIPT_TIMEOUT + 5
        ok = self.wait(lambda: self.settled([s]), limit)
        self.clock = {"receipt_overdue_republished_s": round(time.monotonic() - stepped, 1) if ok else None}
        if not ok:
            rows = [r for r in outbox_rows(self.agent.state) if r.series_uid == s.series_uid and r.kind == "alert"]
            self.violations.append(
                f"clock stepped back 2 h while an alert awaited its receipt: not republished within {limit:.0f} s "
                f"(receipt_timeout {RECEIPT_TIMEOUT:g} s; outbox {[(r.revision, r.state, r.attempts) for r in rows]})")
            self.consumer.resend_receipts()   # recorded; now let the run go on as a consumer catching up would
        rc = self.agent.stop()
        if rc != 0:
            self.violations.append(f"SIGTERM at 1 h behind: exit status {rc}")
        self.start_agent()   # the real clock again: +1 h for the agent
        self.faults["clock step"] += 1
        self.wait_settled(self.sent)
        alarms = [line for line in self.agent.log_text()[log_at:].splitlines() if "ALARM" in line]
        self.clock["alarms"] = [a.split("ALARM: ", 1)[-1][:160] for a in alarms]
        for a in self.clock["alarms"]:
            self.notes.append(f"clock: alarm raised: {a}")

    def phase_disk(self) -> None:
        if self.tmpfs is None:
            return
        filler = self.tmpfs / "filler.bin"
        with open(filler, "wb", buffering=0) as fh:   # unbuffered: ENOSPC surfaces here, not at close
            for chunk in (1 << 20, 4096, 512):
                try:
                    while True:
                        fh.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        self.faults["state disk full"] += 1
        log_at = len(self.agent.log_text())
        free0 = shutil.disk_usage(self.tmpfs).free
        first = len(self.sent)
        during = self.send(True)
        self.wait(lambda: False, self.rng.uniform(4.0, 8.0))   # full for 4-8 s (an exit is restarted, as systemd)
        alive_full = self.agent.alive
        filler.unlink()
        t_free = time.monotonic()
        after = self.send(True)
        ok = self.wait_settled(self.sent[first:], 90)
        latest = {d.series_uid: (d.state, d.at) for d in self.consumer.latest().values()}
        log = self.agent.log_text()[log_at:].splitlines()
        full = [line for line in log if "full" in line.lower() or "space" in line.lower()]
        self.disk = {
            "free_bytes_when_full": free0, "agent_alive_while_full": alive_full,
            "during_alerted": latest.get(during.series_uid, ("-",))[0] == "final",
            "after_alerted": latest.get(after.series_uid, ("-",))[0] == "final",
            "settled": ok, "seconds_free_to_settled": round(time.monotonic() - t_free, 1) if ok else None,
            "log_lines_disk": len(full), "tracebacks": sum("Traceback" in line for line in log),
            "thread_died": sum("Exception in thread" in line for line in log),
            "first_disk_line": full[0][:300] if full else "",
            "exits": [e for e in self.exits if e.startswith("disk")],
        }

    def phase_final(self) -> None:
        s = self.send(True)
        if not self.wait_settled([s], 60):
            self.violations.append("the bleed series sent at the end did not alert (final) within 60 s")

    # --- the run ---------------------------------------------------------------------------------------
    def go(self) -> dict:
        moments = [MOMENTS[(self.n + i * 2) % len(MOMENTS)] for i in range(1 if self.args.quick else 2)]
        rc = None
        try:
            self.setup()
            for phase in self.args.phases:
                self.phase = phase
                if phase == "agent":
                    for m in moments:
                        self.phase_agent(m)
                else:
                    getattr(self, f"phase_{phase}")()
            self.phase = "drain"
            drained = self.wait(lambda: self.settled(self.sent), 120)
            if not drained:
                self.notes.append("drain: not settled within 120 s")
        except Exception as exc:  # noqa: BLE001 - reported as a violation of this run, the next run goes on
            self.violations.append(f"harness error in the {self.phase} phase: {type(exc).__name__}: {exc}")
        finally:
            self.down = True
            if self.agent is not None:
                rc = self.agent.stop()
        if self.agent is None:
            return blank(self.n, self.seed, self.violations)
        if rc not in (0, None):
            self.violations.append(f"SIGTERM at the end: exit status {rc}")
        return self.check()

    def check(self) -> dict:
        state = self.agent.state
        checks = integrity(state)
        for name, verdict in checks.items():
            if verdict != "ok":
                self.violations.append(f"{name}: integrity_check {verdict}")
        files = ledger_files(state)
        done = ledger_series_done(state)
        rows = outbox_rows(state)
        got = self.consumer.keys()
        latest = self.consumer.latest()
        final_by_series = {d.series_uid for d in latest.values() if d.state == "final"}
        outcome: Counter = Counter()
        for s in self.sent:
            for p in s.paths:
                st = self.removed[str(p)] if str(p) in self.removed else \
                    files.get(os.path.realpath(p), (None,))[0]
                if st in ANALYSED:
                    outcome["analysed"] += 1
                elif st in ("excluded", "quarantined"):
                    outcome[st] += 1
                else:
                    outcome["unaccounted"] += 1
                    self.violations.append(f"{p.name} of {s.folder.name}: not accounted for (ledger: {st})")
            positive = self.templates[s.template].positive
            if s.series_uid not in done:
                self.violations.append(f"series {s.folder.name}: never final in the ledger")
            results = [r for r in rows if r.kind == "result" and r.series_uid == s.series_uid]
            if not results or any(r.state != "done" for r in results):
                self.violations.append(f"series {s.folder.name}: result not delivered "
                                       f"({[r.state for r in results] or 'no result row'})")
            if positive and s.series_uid not in final_by_series:
                self.violations.append(f"bleed series {s.folder.name}: no final alert at the consumer")
            if not positive and s.series_uid in final_by_series:
                self.violations.append(f"normal series {s.folder.name}: a final alert (infer decides negative)")
        alerts = [r for r in rows if r.kind == "alert"]
        for r in alerts:
            if r.state != "done":
                self.violations.append(f"alert {r.key} rev {r.revision}: {r.state}, no receipt")
            if (r.key, r.revision) not in got:
                self.violations.append(f"alert {r.key} rev {r.revision}: never reached the consumer")
        log = self.agent.log_text()
        if "Exception in thread" in log:
            self.violations.append(f"a thread died: {log.count('Exception in thread')} 'Exception in thread' lines")
        bleeds = [s for s in self.sent if self.templates[s.template].positive]
        return {
            "run": self.n, "seed": self.seed, "phases": list(self.args.phases), "moments": self.moments,
            "window": self.window, "faults": dict(self.faults),
            "files": sum(len(s.paths) for s in self.sent), "outcome": dict(outcome),
            "series": len(self.sent), "bleeds": len(bleeds),
            "bleeds_alerted": sum(s.series_uid in final_by_series for s in bleeds),
            "alerts_raised": len(alerts), "revisions_raised": sum(r.revision for r in alerts),
            "receipted": sum(r.state == "done" for r in alerts),
            "deliveries": len(self.consumer.deliveries), "duplicates": self.consumer.duplicates(),
            "republished": sum(max(0, r.attempts - 1) for r in alerts),
            "integrity": checks, "exits": self.exits, "disk": self.disk, "clock": self.clock, "notes": self.notes,
            "tracebacks": log.count("Traceback"), "agent_starts": self.agent.starts,
            "seconds": round(time.monotonic() - self.t0, 1), "violations": self.violations,
        }

    def close(self) -> None:
        for part, how in ((self.agent, "close"), (self.consumer, "close"), (self.broker, "stop")):
            if part is not None:
                getattr(part, how)()
        if self.tmpfs is not None:
            proc = subprocess.run(["umount", str(self.tmpfs)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"  run {self.n}: could not unmount {self.tmpfs}: {proc.stderr.strip()}")


def blank(n: int, seed: int, violations: list[str]) -> dict:
    """The figures of a run that could not start."""
    return {"run": n, "seed": seed, "phases": [], "moments": [], "window": [], "faults": {}, "files": 0,
            "outcome": {}, "series": 0, "bleeds": 0, "bleeds_alerted": 0, "alerts_raised": 0, "revisions_raised": 0,
            "receipted": 0, "deliveries": 0, "duplicates": 0, "republished": 0, "integrity": {}, "exits": [],
            "disk": {}, "clock": {}, "notes": [], "tracebacks": 0, "agent_starts": 0, "seconds": 0,
            "violations": violations}


# --- output -----------------------------------------------------------------------------------------
def print_table(results: list[dict]) -> None:
    head = (f"{'run':>3} {'seed':>6} {'agent kills at':<44} {'brk':>3} {'kil':>3} {'files':>5} {'anl/exc/qua':>11} "
            f"{'ser':>3} {'bleed':>5} {'alerts':>6} {'rcpt':>4} {'dup':>3} {'db':>3} {'exit':>4} {'s':>5} {'viol':>4}")
    print(head)
    print("-" * len(head))
    for r in results:
        o = r["outcome"]
        db = "ok" if all(v == "ok" for v in r["integrity"].values()) and r["integrity"] else "BAD"
        print(f"{r['run']:>3} {r['seed']:>6} {'; '.join(r['moments'])[:44]:<44} "
              f"{r['faults'].get('broker SIGKILL', 0):>3} {r['faults'].get('agent SIGKILL', 0):>3} {r['files']:>5} "
              f"{o.get('analysed', 0):>3}/{o.get('excluded', 0):>3}/{o.get('quarantined', 0):>3} {r['series']:>3} "
              f"{r['bleeds_alerted']:>2}/{r['bleeds']:<2} {r['alerts_raised']:>6} {r['receipted']:>4} "
              f"{r['duplicates']:>3} {db:>3} {len(r['exits']):>4} {r['seconds']:>5.0f} {len(r['violations']):>4}")
    tot: Counter = Counter()
    for r in results:
        tot.update(r["faults"])
        tot["files"] += r["files"]
        tot.update({f"outcome {k}": v for k, v in r["outcome"].items()})
        for k in ("series", "bleeds", "bleeds_alerted", "alerts_raised", "revisions_raised", "receipted",
                  "deliveries", "duplicates", "republished", "tracebacks"):
            tot[k] += r[k]
        tot["violations"] += len(r["violations"])
        tot["exits"] += len(r["exits"])
    print(f"\ntotal: {len(results)} runs, {sum(r['seconds'] for r in results):.0f} s; faults "
          + ", ".join(f"{k} {v}" for k, v in sorted(tot.items()) if k in
                      ("agent SIGKILL", "broker SIGKILL", "watch folder removed", "slow consumer", "clock step",
                       "state disk full")))
    print(f"files {tot['files']}: analysed {tot['outcome analysed']}, excluded {tot['outcome excluded']}, "
          f"quarantined {tot['outcome quarantined']}, unaccounted {tot['outcome unaccounted']}; series "
          f"{tot['series']}; bleeds alerted {tot['bleeds_alerted']}/{tot['bleeds']}; alerts raised "
          f"{tot['alerts_raised']} ({tot['revisions_raised']} revisions), receipted {tot['receipted']}; deliveries "
          f"{tot['deliveries']}, duplicates {tot['duplicates']}, republished by the agent {tot['republished']}; "
          f"unexpected exits {tot['exits']}; tracebacks in logs {tot['tracebacks']}; violations {tot['violations']}")
    windows = Counter(w.split(" ", 2)[-1] if w.startswith("rev ") else w for r in results for w in r["window"])
    if windows:
        print("commit→publish kills: " + "; ".join(f"{k}: {v}" for k, v in windows.items()))
    for r in results:
        if r["disk"]:
            d = r["disk"]
            print(f"disk full, run {r['run']}: agent alive while full {d['agent_alive_while_full']}; series sent "
                  f"while full alerted {d['during_alerted']}, sent after alerted {d['after_alerted']}; settled "
                  f"{d['seconds_free_to_settled']} s after space returned; {d['log_lines_disk']} log lines on it, "
                  f"{d['tracebacks']} tracebacks, {d['thread_died']} dead threads, exits {d['exits'] or 'none'}; "
                  f"first: {d['first_disk_line'][:200]}")
        for note in r["notes"]:
            print(f"run {r['run']}: {note}")
        for e in r["exits"]:
            print(f"run {r['run']}: exit: {e}")
        for v in r["violations"][:20]:
            print(f"run {r['run']}: VIOLATION {v}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, help="runs (default 10; 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2 runs (unless --runs), phases broker, agent, final; "
                                                         "one agent kill per run")
    ap.add_argument("--phases", help=f"comma-separated, in order (default: {','.join(PHASES)}; "
                                     f"--quick: {','.join(QUICK_PHASES)})")
    ap.add_argument("--rate", type=float, default=8.0, help="slices/s a scanner writes")
    ap.add_argument("--settle", type=float, default=1.5)
    ap.add_argument("--engines", type=Path)
    ap.add_argument("--work", type=Path, help="working folder (default: a temp folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--json", type=Path, help="write every run's figures here")
    args = ap.parse_args(argv)
    args.runs = args.runs or (2 if args.quick else 10)
    args.phases = tuple(args.phases.split(",")) if args.phases else (QUICK_PHASES if args.quick else PHASES)
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    if "disk" in args.phases and os.geteuid() != 0:
        print("fault_inject: not root, so the disk phase (a tmpfs mounted as the state folder) is left out")
        args.phases = tuple(p for p in args.phases if p != "disk")

    work = args.work or Path(tempfile.mkdtemp(prefix="edge-agent-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"fault_inject: seed {args.seed}, {args.runs} runs, phases {','.join(args.phases)}; {machine_line()}")
    print("  synthetic phantoms, demo models (not medical devices)")
    t0 = time.monotonic()
    kinds = [("ich", s) for s in ((101, 102, 105) if args.quick else (101, 102, 105, 106, 107, 108, 109))] + \
        [("normal", s) for s in ((201, 203) if args.quick else (201, 202, 203, 204))]
    templates = make_templates(work / "templates", kinds, 10, matrix=256, **ROUTINE_HEAD)
    decide_templates(templates, args.engines)
    templates = [t for t in templates if (t.kind == "ich") == t.positive]   # bleeds infer alerts on, quiet normals
    print(f"  templates: {sum(t.positive for t in templates)} bleeds, {sum(not t.positive for t in templates)} normals "
          f"(10 slices of 256², 5 mm; as infer decides them), ready in {time.monotonic() - t0:.0f} s")
    clockstep = build_clockstep(work) if "clock" in args.phases else None
    results = []
    try:
        for n in range(args.runs):
            seed = args.seed * 1000 + n
            run = Run(n, seed, args, templates, work, clockstep)
            try:
                results.append(run.go())
            finally:
                run.close()
            r = results[-1]
            print(f"  run {n} (seed {seed}) done in {r['seconds']:.0f} s: {len(r['violations'])} violations",
                  flush=True)
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(results)
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    return 1 if any(r["violations"] for r in results) or not results else 0


if __name__ == "__main__":
    sys.exit(main())
