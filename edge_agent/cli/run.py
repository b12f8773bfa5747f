"""`edge-agent run`: the daemon beside the scanner."""

from __future__ import annotations

import logging
import signal
import threading

import click

from edge_agent.config import load_config
from edge_agent.errors import EdgeAgentError


@click.command("run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML or YAML config file.")
@click.option("--watch", type=click.Path(file_okay=False), help="Folder the scanner exports to.")
@click.option("--broker", help="mqtt://host:port or mqtts://host:port (default: an embedded broker).")
@click.option("--site", help="Site name (topic level).")
@click.option("--device", help="Device name (topic level).")
@click.option("--engines", type=click.Path(file_okay=False), help="Folder of model folders (default: shipped models).")
@click.option("--backend", type=click.Choice(["auto", "onnxrt", "tensorrt"]), help="Inference backend.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Ledger, outbox, series state, quarantine.")
@click.option("--settle", type=float, help="Quiet period in seconds before a series is final.")
@click.option("--poll/--no-poll", default=None, help="Poll the folder (network shares) instead of inotify.")
@click.option("--poll-interval", type=float, help="Seconds between polls.")
@click.option("--dicom-port", type=int, help="Start a DICOM C-STORE receiver on this port.")
@click.option("--ae-title", help="AE title of the C-STORE receiver.")
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics and /healthz on this port.")
@click.option("--delivery", type=click.Choice(["receipt", "broker"]), help="When an alert counts as delivered.")
@click.option("--check", is_flag=True, help="Validate the configuration and exit.")
def run(config_file, watch, broker, site, device, engines, backend, state_dir, settle, poll, poll_interval,
        dicom_port, ae_title, metrics_port, delivery, check):
    """Run the agent: watch, analyse slices as they arrive, alert over MQTT.

    Settings: defaults < --config file < EDGE_AGENT_* environment < these flags.
    Secrets (MQTT password) come only from the environment or a file.
    """
    overrides = {
        "agent": {"site": site, "device": device, "state_dir": state_dir},
        "ingest": {"watch": watch, "poll": poll, "poll_interval": poll_interval},
        "series": {"settle": settle},
        "inference": {"engines": engines, "backend": backend},
        "mqtt": {"broker": broker, "delivery": delivery},
        "dicom": {"port": dicom_port, "ae_title": ae_title},
        "metrics": {"port": metrics_port},
    }
    cfg = load_config(config_file, overrides=overrides)
    if cfg.agent.log_json:
        from edge_agent.logs import use_json

        use_json()
    if check:
        from edge_agent.service.checks import check_config

        for line in check_config(cfg):
            click.echo(line)
        click.echo("configuration OK")
        return

    from edge_agent.service.app import Agent

    stop = threading.Event()

    def _signal(signum, _frame):
        stop.set()

    previous = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
    agent = Agent(cfg)
    try:
        agent.start()
        click.echo(f"edge-agent running: watching {cfg.ingest.watch}, site={cfg.agent.site} "
                   f"device={cfg.agent.device}; stop with Ctrl-C or SIGTERM.", err=True)
        dead: list[str] = []
        while not stop.wait(1.0) and not dead:
            dead = agent.dead_threads()
        if dead:
            logging.getLogger("edge_agent").error("agent thread(s) ended unexpectedly: %s; exiting so that the "
                                                  "service manager restarts the agent", ", ".join(dead))
            raise EdgeAgentError(f"the agent's {', '.join(dead)} thread ended unexpectedly; exiting with an error "
                                 "so that systemd restarts it (see the log above for the cause).")
        click.echo("edge-agent stopping: finishing queued work and flushing the outbox...", err=True)
    finally:
        agent.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
