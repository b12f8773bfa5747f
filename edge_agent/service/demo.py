"""`edge-agent demo`: embedded broker, agent, simulated scanner and listener in one process.

Everything is real except the patient: real DICOM files on a real
filesystem, the real watcher, the shipped models, the outbox and an MQTT
broker (embedded amqtt), and the reference consumer acknowledging alerts.
"""

from __future__ import annotations

import calendar
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edge_agent.config import Config


def parse_utc(stamp: str) -> float:
    """'2026-11-26T04:08:54.123Z' → epoch seconds."""
    main, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) + (float("0." + frac) if frac else 0.0)


@dataclass
class Timeline:
    events: list[tuple[float, str]] = field(default_factory=list)
    alerts: list[tuple[float, dict]] = field(default_factory=list)
    results: list[tuple[float, dict]] = field(default_factory=list)
    previews: list[tuple[float, dict, Path | None]] = field(default_factory=list)  # (at, payload, saved to)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, t: float, text: str) -> None:
        with self.lock:
            self.events.append((t, text))


def demo_config(root: Path, settle: float, mode: str = "live") -> Config:
    cfg = Config()
    cfg.inference.mode = mode
    cfg.agent.site, cfg.agent.device = "demo", "ct1"
    cfg.agent.state_dir = str(root / "state")
    cfg.ingest.watch = str(root / "incoming")
    cfg.ingest.stable_seconds = 0.1
    cfg.ingest.retry_timeout = 5.0
    cfg.series.settle = settle
    cfg.mqtt.embedded_port = 0
    cfg.mqtt.receipt_timeout = 10.0
    cfg.mqtt.heartbeat_interval = 5.0
    return cfg


def run_demo(*, kinds=("ich", "normal"), rate: float = 8.0, settle: float = 2.0, seed: int = 7,
             style: str = "inplace", keep: Path | None = None, echo: Callable[[str], None] = print,
             timeout: float = 120.0, mode: str = "live", save_previews: Path | None = None) -> Timeline:
    """Run the whole chain once; returns what happened (the CLI prints it as it goes).

    Key-image previews reach the listener too; they are written to ``save_previews`` (created), or to
    ``<keep>/previews`` when the files are kept, else only described."""
    from edge_agent.alerts import MqttSettings
    from edge_agent.alerts.consumer import AlertListener
    from edge_agent.service.app import Agent
    from edge_agent.service.simulator import ROUTINE_HEAD, Scanner

    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    (root / "incoming").mkdir(parents=True, exist_ok=True)
    cfg = demo_config(root, settle, mode)
    timeline = Timeline()
    finals = threading.Event()
    expected = len(kinds)

    def on_result(result: dict) -> None:
        with timeline.lock:
            timeline.results.append((time.time(), result))
            if len(timeline.results) >= expected:
                finals.set()

    def on_alert(payload: dict, *_args) -> None:
        with timeline.lock:
            timeline.alerts.append((time.time(), payload))

    previews_dir = Path(save_previews) if save_previews else (root / "previews" if keep else None)
    if previews_dir is not None:
        previews_dir.mkdir(parents=True, exist_ok=True)

    def on_preview(payload: dict) -> None:
        from edge_agent.alerts.previews import save_preview

        at, saved = time.time(), None
        if previews_dir is not None:
            try:
                saved = save_preview(previews_dir, payload)
            except (OSError, ValueError) as exc:
                echo(f"  (the preview of alert {payload.get('alert_id')} was not saved: {exc})")
        with timeline.lock:
            timeline.previews.append((at, payload, saved))

    agent = Agent(cfg)
    agent.result_listeners.append(on_result)
    listener = None
    scanner = None
    t0 = time.time()
    try:
        echo("edge-agent demo: synthetic CT phantoms, not patients; the models are not medical devices.")
        if mode == "shadow":
            echo("  mode    shadow (silent trial): results say what would have alerted; no alert is raised")
        agent.start()
        echo(f"  broker  {agent.broker.url} (embedded)\n  watch   {cfg.ingest.watch}")
        # as the agent connects to its embedded broker (MQTT 3.1.1 only), under its own client id
        settings = MqttSettings.from_config(cfg, url=agent.broker.url, protocol="3.1.1",
                                            client_id="edge-agent-demo-listener")
        listener = AlertListener(settings, on_alert=on_alert, store_path=root / "listener.sqlite3",
                                 send_receipts=True, on_preview=on_preview)
        listener.start()
        # A clearly visible bleed (12 mL) in a routine 5 mm head series, without motion or metal, so the
        # demo shows the early warning; tests and docs/MODELS.md cover the small and the hard ones.
        routine = ROUTINE_HEAD
        scanner = Scanner(root / "incoming", list(kinds), rate=rate, style=style, shuffle=True, seed=seed,
                          phantom_kwargs={"ich": {"volume_ml": 12.0, **routine}, "normal": routine})
        t0 = time.time()
        scanner.run()
        finals.wait(timeout)
        time.sleep(0.5)  # let the last final alert reach the listener
    finally:
        if listener is not None:
            listener.stop()
        agent.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    report(scanner.series if scanner else [], timeline, t0, echo)
    return timeline


def report(series_list, timeline: Timeline, t0: float, echo: Callable[[str], None]) -> None:
    """Print a short timeline per series: first slice, decisive slice, preliminary alert, final result."""
    for n, sim in enumerate(series_list, 1):
        if not sim.delivered:
            continue
        first = min(d.completed_at for d in sim.delivered)
        last = max(d.completed_at for d in sim.delivered)
        d = sim.details
        if d.get("bleed_type"):
            details = f"{d['bleed_type'].upper()} bleed, {d.get('volume_ml', 0):.1f} mL at {d.get('bleed_hu', 0):.0f} HU"
        elif d.get("nodule_type"):
            details = f"{d['nodule_type'].replace('_', '-')} nodule, {d.get('diameter_mm', 0):.1f} mm"
        else:
            details = "no finding"
        details += f"; {d.get('vendor', '?')}-style headers, {d.get('thickness_mm', '?')} mm slices"
        echo(f"\nSeries {n}: {sim.kind} phantom ({details}), {len(sim.delivered)} slices, shuffled")
        rows = [(first, "first slice written"), (last, "last slice written")]
        uid = sim.series_instance_uid
        decisive = None
        for at, payload in timeline.alerts:
            if payload.get("study", {}).get("series_instance_uid") != uid:
                continue
            f = payload["finding"]
            stamps = payload.get("timestamps", {})
            extra = ""
            if decisive is None and "decisive_slice_received" in stamps:
                decisive = parse_utc(stamps["decisive_slice_received"])
                rows.append((decisive, "decisive slice complete on disk"))
                extra = f" — {1000 * (at - decisive):.0f} ms after the decisive slice"
            rows.append((at, f"{payload['state'].upper()} alert {f['code']} p={f['probability']:.2f} "
                             f"rev {payload['revision']} at the listener{extra}"))
            for p_at, preview, saved in timeline.previews:
                if preview["alert_id"] == payload["alert_id"] and preview["revision"] == payload["revision"]:
                    kind = preview["mime"].split("/")[-1].upper()
                    rows.append((p_at, f"  key-image preview rev {preview['revision']}: {preview['width']}x"
                                       f"{preview['height']} {kind}, {preview['bytes'] / 1024:.1f} KiB"
                                       + (", the evidence framed in red" if preview.get("regions") else "")
                                       + (f" -> {saved}" if saved else "")))
        for at, result in timeline.results:
            if result["series_instance_uid"] != uid:
                continue
            summary = ", ".join(f"{f['code']} {'POSITIVE' if f['positive'] else 'negative'} p={f['probability']:.2f}"
                                + (f", {f['slices_positive']}/{result['slices']} slices called at ≥ "
                                   f"{f['slice_threshold']:g}" if "slices_positive" in f else "")
                                + (" — would alert, none raised (shadow)" if f.get("would_alert") else "")
                                for f in result["findings"]) or result.get("reason", "")
            rows.append((at, f"final result: {result['status']} ({summary})"))
        for at, text in sorted(rows):
            echo(f"  +{at - first:7.3f} s  {text}")
    echo("\n(alerts were published over MQTT, stored in the outbox first, and acknowledged by the listener)")
