"""A fleet on one broker (issue 16 §4): many agents, one Mosquitto, a consumer group and a dashboard.

Eight agents by default (``--agents``), each an ``edge-agent run`` as a user
starts it with its own ``site``/``device``, watch and state folder (receipt
mode, 1 decode worker, 1 inference thread), publish into one Mosquitto
(persistence on, ``autosave_interval 1``). Three ``edge-agent listen``
processes consume: two in one shared-subscription group
(``--group pagers``: ``$share/pagers/edge-agent/+/+/alerts``, each with its
own store and client id), which send receipts, and one ordinary subscriber
(``dashboard``, ``--no-receipts`` as docs/DEPLOYMENT.md advises for
consumers whose receipt must not stand for the pagers'; ``--dashboard-receipts``
changes that). One scanner per agent writes seeded phantom head
series (bleeds and normals, 10 slices of 256², at ``--rate`` slices/s, a
seeded pause between series). Mid-run, at seeded moments, one agent is
SIGKILLed and restarted on its state, and the broker is SIGKILLed and
restarted; the scanners keep writing meanwhile.

Checks (a failed one is a violation; exit status 1): per agent, every file
accounted for in its ledger, every series final and its result delivered,
every alert raised (an outbox row) receipted; the group received every
alert in its latest revision (each alert to at least one member), the
dashboard received every one; every bleed series has a final alert at the
group and at the dashboard and no normal series has one; what the consumers
received is only what the agents raised (same ``alert_id`` and a revision
the agent raised: duplicates only as at-least-once allows), one
``alert_id`` per series and finding; ``integrity_check`` ok on every
agent's ``*.sqlite3``; clean SIGTERM exits. Duplicates are counted from
each listener's store (deliveries beyond the first).

    .venv/bin/python scripts/fleet.py --seed 1                   # 8 agents, docs/RELIABILITY.md figures
    .venv/bin/python scripts/fleet.py --quick                    # CI: 3 agents, 2 series each
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _harness import (ROUTINE_HEAD, AgentProcess, MosquittoBroker, Sent, decide_templates,  # noqa: E402
                      edge_agent_command, integrity, ledger_files, ledger_series_done, machine_line, make_templates,
                      outbox_rows, replay, start_agent, wait_until)
from edge_agent.testing.processes import terminate

SITES = ("st-marys", "general", "north", "south")
GROUP = "pagers"
AGENT_ENV = {
    "EDGE_AGENT_INGEST_STABLE_SECONDS": "0.3",
    "EDGE_AGENT_INGEST_RETRY_TIMEOUT": "10",
    "EDGE_AGENT_INGEST_RESCAN_INTERVAL": "5",
    "EDGE_AGENT_INGEST_WORKERS": "1",
    "EDGE_AGENT_INFERENCE_THREADS": "1",
    "EDGE_AGENT_MQTT_RECEIPT_TIMEOUT": "5",
    "EDGE_AGENT_MQTT_HEARTBEAT_INTERVAL": "10",
}


class Listener:
    """``edge-agent listen --json --store …`` as a process: what it printed, and its store's delivery counts."""

    def __init__(self, root: Path, url: str, name: str, group: str | None = None, receipts: bool = True):
        self.name, self.group = name, group
        self.out, self.err, self.store = root / f"{name}.jsonl", root / f"{name}.log", root / f"{name}.sqlite3"
        self.args = [*edge_agent_command(), "-v", "listen", "--broker", url, "--json", "--store", str(self.store),
                     "--consumer", name, *(["--group", group] if group else []),
                     *([] if receipts else ["--no-receipts"])]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.out, "a") as out, open(self.err, "a") as err:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=err, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        terminate(self.proc, 20)
        return self.proc.returncode

    def alerts(self) -> list[dict]:
        out = []
        for line in self.out.read_text(errors="replace").splitlines() if self.out.exists() else []:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def keys(self) -> set[tuple[str, int]]:
        return {(a["alert_id"], int(a["revision"])) for a in self.alerts()}

    def deliveries(self) -> dict[tuple[str, int], int]:
        """(alert_id, revision) → deliveries, from the listener's store (read-only)."""
        if not self.store.exists():
            return {}
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=5)) as db:
                return {(a, r): n for a, r, n in db.execute("SELECT alert_id, revision, deliveries FROM seen")}
        except sqlite3.Error:
            return {}


class Fleet:
    def __init__(self, args, templates, work: Path):
        self.args, self.templates, self.work = args, templates, work
        self.rng = random.Random(args.seed)
        self.bleeds = [i for i, t in enumerate(templates) if t.positive]
        self.normals = [i for i, t in enumerate(templates) if t.positive is False]
        self.sent: dict[int, list[Sent]] = {}
        self.violations: list[str] = []
        self.events: list[str] = []
        self.agents: list[AgentProcess] = []
        self.lock = threading.Lock()
        self.broker = MosquittoBroker(work / "mqtt", persistence=True, autosave_interval=1)
        url = self.broker.url
        self.listeners = [Listener(work, url, "pager-1", GROUP), Listener(work, url, "pager-2", GROUP),
                          Listener(work, url, "dashboard", receipts=args.dashboard_receipts)]

    def site_device(self, i: int) -> tuple[str, str]:
        return SITES[i % len(SITES)], f"ct{i // len(SITES) + 1}"

    def t(self) -> str:
        return f"{time.monotonic() - self.t0:6.1f} s"

    def scanner(self, i: int, plan: list[bool], pauses: list[float], styles: list[str], picks: list[int]) -> None:
        agent = self.agents[i]
        for k, positive in enumerate(plan):
            time.sleep(pauses[k])
            ti = picks[k]
            s = replay(self.templates[ti], ti, 1000 * (i + 1) + k, agent.watch, self.args.rate, styles[k],
                       threading.Event(), self.work / f"staging{i}")
            with self.lock:
                self.sent[i].append(s)

    def settled(self) -> bool:
        group = self.listeners[0].keys() | self.listeners[1].keys()
        dash = self.listeners[2].keys()
        for i, agent in enumerate(self.agents):
            done = ledger_series_done(agent.state)
            if not all(s.series_uid in done for s in self.sent[i]):
                return False
            rows = outbox_rows(agent.state)
            if any(r.state != "done" for r in rows):
                return False
            keys = {(r.key, r.revision) for r in rows if r.kind == "alert"}
            if not keys <= group or not keys <= dash:
                return False
        return True

    def run(self) -> dict:
        args, rng = self.args, self.rng
        n = args.agents
        # Everything seeded is drawn first, so the same seed gives the same plan whatever the timing.
        plans = []
        for i in range(n):
            plan = [True] + [rng.random() < 0.5 for _ in range(args.series - 1)]
            rng.shuffle(plan)
            plans.append((plan, [rng.uniform(0.5, 3.0) for _ in plan], [rng.choice(("inplace", "rename", "movein"))
                                                                        for _ in plan],
                          [rng.choice(self.bleeds if p else self.normals) for p in plan]))
        span = args.series * (10 / args.rate + 1.75)
        victim = rng.randrange(n)
        agent_kill_at, agent_down = rng.uniform(0.2, 0.5) * span, rng.uniform(1.0, 4.0)
        broker_kill_at, broker_down = rng.uniform(0.5, 0.8) * span, rng.uniform(1.0, 3.0)

        self.broker.start()
        for li in self.listeners:
            li.start()
        ids = [f"edge-agent-listen-{li.name}" for li in self.listeners]
        if not wait_until(lambda: all(c in self.broker.log_text() for c in ids), 60):
            raise RuntimeError(f"the listeners did not connect: {[li.err.read_text()[-500:] for li in self.listeners]}")
        t_start = time.monotonic()
        for i in range(n):
            site, device = self.site_device(i)
            self.agents.append(start_agent(self.work / f"agent{i}", self.broker.url, args.settle, AGENT_ENV,
                                            args.engines, site=site, device=device, delivery="receipt",
                                            verbose=True))
            self.sent[i] = []
        self.startup_s = time.monotonic() - t_start
        self.t0 = time.monotonic()
        scanners = [threading.Thread(target=self.scanner, args=(i, *plans[i]), name=f"scanner-{i}") for i in range(n)]
        for th in scanners:
            th.start()
        chaos = sorted([(agent_kill_at, "agent"), (broker_kill_at, "broker")])
        for at, what in chaos:
            time.sleep(max(0.0, self.t0 + at - time.monotonic()))
            if what == "agent":
                a = self.agents[victim]
                self.events.append(f"{self.t()}: SIGKILL agent {victim} ({a.site}/{a.device}), down {agent_down:.1f} s")
                a.kill()
                for name, verdict in integrity(a.state).items():
                    if verdict != "ok":
                        self.violations.append(f"agent {victim} {name} after SIGKILL: integrity_check {verdict}")
                time.sleep(agent_down)
                a.start()
                self.events.append(f"{self.t()}: agent {victim} running again")
            else:
                self.events.append(f"{self.t()}: SIGKILL broker, down {broker_down:.1f} s")
                self.broker.crash()
                time.sleep(broker_down)
                self.broker.start()
                self.events.append(f"{self.t()}: broker running again")
        for th in scanners:
            th.join()
        self.events.append(f"{self.t()}: the scanners are done")
        drained = wait_until(self.settled, args.drain, 0.5)
        self.events.append(f"{self.t()}: {'settled' if drained else f'NOT settled after {args.drain:.0f} s'}")
        if not drained:
            self.violations.append(f"not settled {args.drain:.0f} s after the scanners stopped")
        for i, a in enumerate(self.agents):
            rc = a.stop()
            if rc != 0:
                self.violations.append(f"agent {i}: SIGTERM exit status {rc}")
        for li in self.listeners:
            rc = li.stop()
            if rc not in (0, -signal.SIGTERM):
                self.violations.append(f"listener {li.name}: exit status {rc}")
        return self.check(victim)

    def check(self, victim: int) -> dict:
        group_alerts = self.listeners[0].alerts() + self.listeners[1].alerts()
        dash_alerts = self.listeners[2].alerts()
        member_keys = [self.listeners[0].keys(), self.listeners[1].keys()]
        group, dash = member_keys[0] | member_keys[1], self.listeners[2].keys()
        deliveries = [li.deliveries() for li in self.listeners]
        raised: dict[str, int] = {}          # alert_id → highest revision raised (outbox)
        rows_by_agent = {}
        per_agent = []
        for i, agent in enumerate(self.agents):
            site, device = agent.site, agent.device
            rows = outbox_rows(agent.state)
            rows_by_agent[i] = rows
            files = ledger_files(agent.state)
            done = ledger_series_done(agent.state)
            alerts = [r for r in rows if r.kind == "alert"]
            for r in alerts:
                raised[r.key] = r.revision
            keys = {(r.key, r.revision) for r in alerts}
            outcome: Counter = Counter()
            for s in self.sent[i]:
                for p in s.paths:
                    st = files.get(os.path.realpath(p), (None,))[0]
                    outcome["analysed" if st in ("accepted", "duplicate") else st or "unaccounted"] += 1
                    if st not in ("accepted", "duplicate", "excluded", "quarantined"):
                        self.violations.append(f"agent {i}: {p.name} of {s.folder.name} not accounted for ({st})")
                if s.series_uid not in done:
                    self.violations.append(f"agent {i}: series {s.folder.name} never final")
                res = [r for r in rows if r.kind == "result" and r.series_uid == s.series_uid]
                if not res or any(r.state != "done" for r in res):
                    self.violations.append(f"agent {i}: series {s.folder.name} result not delivered")
            for r in alerts:
                if r.state != "done":
                    self.violations.append(f"agent {i}: alert {r.key} rev {r.revision} {r.state}, no receipt")
            if not keys <= group:
                self.violations.append(f"agent {i}: {len(keys - group)} alerts never reached the group in their "
                                       "latest revision")
            if not keys <= dash:
                self.violations.append(f"agent {i}: {len(keys - dash)} alerts never reached the dashboard in their "
                                       "latest revision")
            finals = {}
            for who, got in (("group", group_alerts), ("dashboard", dash_alerts)):
                finals[who] = {a["study"]["series_instance_uid"] for a in got if a["state"] == "final"}
            bleeds = [s for s in self.sent[i] if self.templates[s.template].positive]
            for s in self.sent[i]:
                positive = self.templates[s.template].positive
                for who in ("group", "dashboard"):
                    if positive and s.series_uid not in finals[who]:
                        self.violations.append(f"agent {i}: bleed {s.folder.name}: no final alert at the {who}")
                    if not positive and s.series_uid in finals[who]:
                        self.violations.append(f"agent {i}: normal {s.folder.name}: a final alert at the {who}")
            per_series = Counter(r.series_uid for r in alerts)
            if any(v > 1 for v in per_series.values()):
                self.violations.append(f"agent {i}: more than one alert_id for one series")
            for name, verdict in integrity(agent.state).items():
                if verdict != "ok":
                    self.violations.append(f"agent {i} {name}: integrity_check {verdict}")
            dups = [sum(n - 1 for k, n in d.items() if k in keys) for d in deliveries]
            per_agent.append({
                "agent": i, "site": site, "device": device, "files": sum(len(s.paths) for s in self.sent[i]),
                "outcome": dict(outcome), "series": len(self.sent[i]), "bleeds": len(bleeds),
                "bleeds_alerted": sum(s.series_uid in finals["group"] and s.series_uid in finals["dashboard"]
                                      for s in bleeds),
                "alerts": len(alerts), "revisions": sum(r.revision for r in alerts),
                "receipted": sum(r.state == "done" for r in alerts),
                "to_pager1": len(keys & member_keys[0]), "to_pager2": len(keys & member_keys[1]),
                "to_group": len(keys & group), "to_dashboard": len(keys & dash),
                "to_both_pagers": len(keys & member_keys[0] & member_keys[1]),
                "dup_pager1": dups[0], "dup_pager2": dups[1], "dup_dashboard": dups[2],
                "republished": sum(max(0, r.attempts - 1) for r in alerts), "killed": i == victim,
                "starts": agent.starts, "integrity": integrity(agent.state),
                "tracebacks": agent.log_text().count("Traceback"),
            })
        # Only what was raised arrived: no unknown alert_id, no revision above the one raised.
        for who, got in (("group", group), ("dashboard", dash)):
            for alert_id, revision in got:
                if alert_id not in raised or revision > raised[alert_id]:
                    self.violations.append(f"{who} received {alert_id} rev {revision}, which no agent raised")
        return {"agents": per_agent, "events": self.events, "violations": self.violations,
                "startup_s": round(self.startup_s, 1),
                "listeners": {li.name: {"printed": len(li.alerts()), "deliveries": sum(d.values()),
                                        "duplicates": sum(n - 1 for n in d.values())}
                              for li, d in zip(self.listeners, deliveries)}}

    def close(self) -> None:
        for a in self.agents:
            a.close()
        for li in self.listeners:
            li.stop()
        self.broker.stop()


def print_table(r: dict) -> None:
    head = (f"{'agent':>5} {'site/device':<14} {'kill':>4} {'files':>5} {'anl/exc/qua':>11} {'ser':>3} {'bleed':>5} "
            f"{'alerts':>6} {'revs':>4} {'rcpt':>4} {'pgr1':>4} {'pgr2':>4} {'group':>5} {'dash':>4} "
            f"{'dup g/d':>7} {'repub':>5} {'db':>3}")
    print(head)
    print("-" * len(head))
    tot: Counter = Counter()
    for a in r["agents"]:
        o = a["outcome"]
        db = "ok" if a["integrity"] and all(v == "ok" for v in a["integrity"].values()) else "BAD"
        print(f"{a['agent']:>5} {a['site'] + '/' + a['device']:<14} {'yes' if a['killed'] else '':>4} {a['files']:>5} "
              f"{o.get('analysed', 0):>3}/{o.get('excluded', 0):>3}/{o.get('quarantined', 0):>3} {a['series']:>3} "
              f"{a['bleeds_alerted']:>2}/{a['bleeds']:<2} {a['alerts']:>6} {a['revisions']:>4} {a['receipted']:>4} "
              f"{a['to_pager1']:>4} {a['to_pager2']:>4} {a['to_group']:>5} {a['to_dashboard']:>4} "
              f"{a['dup_pager1'] + a['dup_pager2']:>3}/{a['dup_dashboard']:<3} {a['republished']:>5} {db:>3}")
        for k in ("files", "series", "bleeds", "bleeds_alerted", "alerts", "revisions", "receipted", "to_group",
                  "to_dashboard", "to_pager1", "to_pager2", "to_both_pagers", "dup_pager1", "dup_pager2",
                  "dup_dashboard", "republished", "tracebacks"):
            tot[k] += a[k]
        tot.update({f"o_{k}": v for k, v in o.items()})
    print(f"\ntotal: {len(r['agents'])} agents (started in {r['startup_s']} s), files {tot['files']} (analysed "
          f"{tot['o_analysed']}, excluded {tot['o_excluded']}, quarantined {tot['o_quarantined']}), series "
          f"{tot['series']}, bleeds alerted at group and dashboard {tot['bleeds_alerted']}/{tot['bleeds']}; alerts "
          f"{tot['alerts']} ({tot['revisions']} revisions), receipted {tot['receipted']}; group received "
          f"{tot['to_group']}/{tot['alerts']} (pager-1 {tot['to_pager1']}, pager-2 {tot['to_pager2']}, both "
          f"{tot['to_both_pagers']}), dashboard {tot['to_dashboard']}/{tot['alerts']}; duplicates pager-1 "
          f"{tot['dup_pager1']}, pager-2 {tot['dup_pager2']}, dashboard {tot['dup_dashboard']}; republished by agents "
          f"{tot['republished']}; "
          f"tracebacks in agent logs {tot['tracebacks']}; violations {len(r['violations'])}")
    for name, li in r["listeners"].items():
        print(f"  listener {name}: printed {li['printed']} (new or updated), deliveries {li['deliveries']}, "
              f"duplicates {li['duplicates']}")
    for e in r["events"]:
        print(f"  {e}")
    for v in r["violations"][:30]:
        print(f"  VIOLATION {v}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--agents", type=int, help="agents (default 8; 3 with --quick)")
    ap.add_argument("--series", type=int, help="series per agent (default 4; 2 with --quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dashboard-receipts", action="store_true",
                    help="the dashboard sends receipts too (default: only the group does, as "
                         "docs/DEPLOYMENT.md advises)")
    ap.add_argument("--rate", type=float, default=2.0, help="slices/s each scanner writes")
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--drain", type=float, default=180.0, help="seconds to wait for everything to settle")
    ap.add_argument("--engines", type=Path)
    ap.add_argument("--work", type=Path, help="working folder (default: a temp folder, removed at the end)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.agents = args.agents or (3 if args.quick else 8)
    args.series = args.series or (2 if args.quick else 4)
    if args.agents > 90:
        ap.error("at most 90 agents (replayed UIDs carry the agent number)")
    work = args.work or Path(tempfile.mkdtemp(prefix="edge-agent-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"fleet: seed {args.seed}, {args.agents} agents × {args.series} series at {args.rate:g} slices/s; "
          f"{machine_line()}")
    print("  synthetic phantoms, demo models (not medical devices)")
    t0 = time.monotonic()
    kinds = [("ich", 101), ("ich", 105)] + [("normal", 201)] if args.quick else \
        [("ich", s) for s in (101, 102, 105, 107)] + [("normal", s) for s in (201, 203)]
    templates = make_templates(work / "templates", kinds, 10, matrix=256, **ROUTINE_HEAD)
    decide_templates(templates, args.engines)
    templates = [t for t in templates if (t.kind == "ich") == t.positive]
    fleet = Fleet(args, templates, work)
    result: dict = {}
    try:
        result = fleet.run()
    except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
        fleet.violations.append(f"harness error: {type(exc).__name__}: {exc}")
        result = {"agents": [], "events": fleet.events, "violations": fleet.violations, "startup_s": 0,
                  "listeners": {}}
    finally:
        fleet.close()
        if args.json:
            args.json.write_text(json.dumps(result, indent=1, default=str))
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(result)
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
