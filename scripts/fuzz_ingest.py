"""Seeded fuzzing of the ingest boundary at scale (issue 16 §2); figures go into docs/RELIABILITY.md.

Mutated real CT files (pydicom's test files, MR ones retagged as CT, and
synthetic series in every transfer syntax we write) and hostile file-system
entries (FIFOs, folders named like files, mode-000 files, 255-byte and
non-UTF-8 names) go through ``read_file``, the ingest's decode step and
``scan`` in batches (every ``--process-every``-th batch with worker
processes), then ``--live`` more through a running ``Ingest`` on a real
watch folder. See edge_agent/ingest/fuzz.py for what counts as a violation.

    .venv/bin/python scripts/fuzz_ingest.py --seed 1 --inputs 10000
    .venv/bin/python scripts/fuzz_ingest.py --seed 2 --inputs 500 --live 200 --keep /tmp/fuzz
    .venv/bin/python scripts/fuzz_ingest.py --seed 3 --inputs 0 --live 0 --agent 1000

``--agent N``: N more mutated files into the watch folder of a real ``edge-agent
run`` (a real Mosquitto started here), then a bleed series: the agent must
still be alive, every file must be in its ledger (accepted, duplicate,
excluded or quarantined), the bleed series must alert, and every SQLite file
must pass ``integrity_check``.

Prints a table (inputs, accepted, rejected by reason class, max time per
file, peak RSS, violations) and exits 1 if there was any violation.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path


from edge_agent.dicom.mutate import mutate, seed_files  # noqa: E402
from edge_agent.ingest import Ingest, IngestSettings  # noqa: E402
from edge_agent.ingest import fuzz  # noqa: E402


def live(workdir: Path, seed: int, count: int) -> tuple[dict, list[str]]:
    """``count`` mutated files dropped into a watched folder; returns the ingest's stats and bad reasons."""
    watch, state = workdir / "live-watch", workdir / "live-state"
    watch.mkdir(parents=True)
    rejected: list[str] = []
    ingest = Ingest(IngestSettings(watch, state, stable_seconds=0.05, retry_timeout=0.3, workers=2),
                    on_file=lambda item: None, on_rejected=lambda path, reason: rejected.append(reason))
    ingest.start()
    try:
        rng = random.Random(seed)
        seeds = [p.read_bytes() for p in seed_files(workdir / "live-seeds", seed)]
        for k in range(count):
            (watch / f"IM{k:06d}.dcm").write_bytes(mutate(rng.choice(seeds), rng)[1])
        deadline = time.monotonic() + 60 + count * 0.5
        while time.monotonic() < deadline:
            stats = ingest.stats()
            if stats["files_seen"] >= count and stats["pending"] == stats["decoding"] == 0:
                break
            time.sleep(0.2)
        stats = ingest.stats()
        alive = all(t.is_alive() for t in ingest._threads)
    finally:
        ingest.stop()
    problems = [f"live: reason is not a sentence: {r[:200]!r}" for r in rejected if not fuzz.is_sentence(r)]
    if stats["files_seen"] != count:
        problems.append(f"live: {count} files written, {stats['files_seen']} judged ({stats})")
    if not alive:
        problems.append("live: an ingest thread died")
    return stats, problems


def through_agent(workdir: Path, seed: int, count: int) -> tuple[dict, list[str]]:
    """``count`` mutated files into a running ``edge-agent run``, then a bleed series that must alert."""
    import threading

    from _harness import (MosquittoBroker, decide_templates, integrity, ledger_files, make_templates, replay,
                          start_agent, subscriber, wait_until)

    problems: list[str] = []
    templates = make_templates(workdir / "templates", [("ich", s) for s in (301, 302, 303)], 30, thickness_mm=5.0,
                               force={"kernel": "standard", "motion": False, "metal": False})
    decide_templates(templates)
    bleed = next((t for t in templates if t.positive), None)
    if bleed is None:
        return {}, ["agent: no bleed template that infer alerts on (the model changed?)"]
    broker = MosquittoBroker(workdir / "mqtt", persistence=False).start()
    sub = subscriber(broker.url, client_id="fuzz-agent")
    agent = start_agent(workdir / "agent", broker.url, 2.0, {"EDGE_AGENT_INGEST_RETRY_TIMEOUT": "1"}, None)
    out: dict = {}
    try:
        rng = random.Random(seed)
        seeds = [p.read_bytes() for p in seed_files(workdir / "agent-seeds", seed)]
        fuzz_dir = agent.watch / "fuzz"
        fuzz_dir.mkdir()
        written = []
        for k in range(count):
            path = fuzz_dir / f"IM{k:06d}.dcm"
            path.write_bytes(mutate(rng.choice(seeds), rng)[1])
            written.append(str(path))
        judged = wait_until(lambda: set(written) <= set(ledger_files(agent.state)), 120 + count * 0.5, 1.0)
        ledger = ledger_files(agent.state)
        states: dict[str, int] = {}
        for path in written:
            state = ledger.get(path, ("missing", None, None))[0]
            states[state] = states.get(state, 0) + 1
        if not judged:
            problems.append(f"agent: {states.get('missing', 0)} of {count} files not in the ledger")
        bad = [r for path in written for st, r, _ in [ledger.get(path, ("", None, None))]
               if st == "quarantined" and r and not fuzz.is_sentence(r)]
        problems += [f"agent: reason is not a sentence: {r[:200]!r}" for r in bad[:20]]
        sent = replay(bleed, 0, 777, agent.watch, 20.0, "inplace", threading.Event(), workdir / "staging")
        alerted = wait_until(lambda: sub.first("alerts", sent.series_uid) is not None, 120, 0.5)
        alive = agent.proc is not None and agent.proc.poll() is None
        if not alerted:
            problems.append("agent: the bleed series sent after the fuzzed files did not alert")
        if not alive:
            problems.append("agent: the agent died")
        out = {"written": count, "states": states, "bleed_alerted": alerted, "alive": alive}
    finally:
        agent.stop()
        sub.close()
        broker.stop()
    checks = integrity(agent.state)
    problems += [f"agent: {name} integrity_check: {verdict}" for name, verdict in checks.items() if verdict != "ok"]
    out["integrity"] = checks
    return out, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=20, help="files per scan() batch")
    parser.add_argument("--process-every", type=int, default=25,
                        help="every n-th batch is scanned with worker processes (0: never)")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="a file slower than this is a violation")
    parser.add_argument("--live", type=int, default=500, help="inputs through a running Ingest afterwards")
    parser.add_argument("--agent", type=int, default=0,
                        help="inputs through a running edge-agent run (with a broker) afterwards, then a bleed series")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    faulthandler.enable()  # a decoder that aborts the process (C++ std::terminate) still names the file
    logging.basicConfig(level=logging.CRITICAL)  # thousands of expected warnings otherwise
    import warnings

    warnings.simplefilter("ignore")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="edge-agent-fuzz-"))
    if args.keep and workdir.exists():
        shutil.rmtree(workdir)
    try:
        report = fuzz.run(workdir / "fuzz", args.seed, args.inputs, batch=args.batch,
                          max_seconds=args.max_seconds, process_every=args.process_every)
        stats, problems = live(workdir, args.seed, args.live) if args.live else ({}, [])
        report.violations.extend(problems)
        agent_stats, problems = through_agent(workdir, args.seed, args.agent) if args.agent else ({}, [])
        report.violations.extend(problems)
        report.peak_rss_mb = fuzz._peak_rss_mb()
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"edge-agent fuzz_ingest: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}), "
          f"uid {os.geteuid()}")
    print(report.table())
    if stats:
        print(f"| live ingest          | {args.live} written, {stats['files_seen']} judged: "
              f"{stats['accepted']} accepted, {stats['duplicates']} duplicates, {stats['excluded']} excluded, "
              f"{stats['quarantined']} quarantined ({stats['conflicts']} conflicts) |")
    if agent_stats:
        print(f"| edge-agent run       | {agent_stats['written']} written: "
              + ", ".join(f"{n} {state}" for state, n in sorted(agent_stats["states"].items()))
              + f"; bleed series afterwards alerted: {'yes' if agent_stats['bleed_alerted'] else 'NO'}; agent alive: "
              f"{'yes' if agent_stats['alive'] else 'NO'}; integrity_check: "
              + ", ".join(f"{k} {v}" for k, v in agent_stats["integrity"].items()) + " |")
    print("mutations (first of each input):", dict(report.mutations.most_common()))
    for line in report.violations[:50]:
        print("VIOLATION", line)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
