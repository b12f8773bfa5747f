"""`edge-agent run`: the daemon beside the scanner."""

from __future__ import annotations

import logging
import signal
import threading

import click

from edge_agent.config import load_config
from edge_agent.errors import EdgeAgentError
from edge_agent.inference.backends import BACKENDS


@click.command("run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML or YAML config file.")
@click.option("--watch", type=click.Path(file_okay=False), help="Folder the scanner exports to.")
@click.option("--broker", help="mqtt://host:port or mqtts://host:port (default: an embedded broker).")
@click.option("--site", help="Site name (topic level).")
@click.option("--device", help="Device name (topic level).")
@click.option("--engines", type=click.Path(file_okay=False), help="Folder of model folders (default: shipped models).")
@click.option("--backend", type=click.Choice(BACKENDS), help="Inference backend.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Ledger, outbox, series state, quarantine.")
@click.option("--settle", type=float, help="Quiet period in seconds before a series is final.")
@click.option("--poll/--no-poll", default=None, help="Poll the folder (network shares) instead of inotify.")
@click.option("--poll-interval", type=float, help="Seconds between polls.")
@click.option("--dicom-port", type=int, help="Start a DICOM C-STORE receiver on this port.")
@click.option("--ae-title", help="AE title of the C-STORE receiver.")
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics and /healthz on this port.")
@click.option("--delivery", type=click.Choice(["receipt", "broker"]), help="When an alert counts as delivered.")
@click.option("--pacs", "pacs", multiple=True, metavar="AET@HOST:PORT",
              help="Send each final result as DICOM SR + key images to this destination (repeatable): "
              "AET@host:port (C-STORE), tls:AET@host:port (DICOM TLS) or a DICOMweb http(s):// root (STOW-RS).")
@click.option("--retry-dead-letters", is_flag=True,
              help="At start, send the PACS dead letters (given up after pacs.dead_after) again.")
@click.option("--check", is_flag=True, help="Check the configuration, folders, models, ports and broker; then exit "
              "(non-zero if anything fails). Changes nothing.")
def run(config_file, watch, broker, site, device, engines, backend, state_dir, settle, poll, poll_interval,
        dicom_port, ae_title, metrics_port, delivery, pacs, retry_dead_letters, check):
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
        "pacs": {"destinations": list(pacs) or None},
    }
    cfg = load_config(config_file, overrides=overrides)
    if cfg.agent.log_json:
        from edge_agent.logs import use_json

        use_json()
    if check:
        _check(cfg)
        return
    _state_folder(cfg)
    if retry_dead_letters:
        _retry_dead_letters(cfg)

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


def _check(cfg) -> None:
    """``--check``: one line per check, OK lines on stdout, FAIL lines on stderr; non-zero exit if any fails."""
    from edge_agent import __version__
    from edge_agent.config import config_hash
    from edge_agent.errors import ConfigError
    from edge_agent.service.preflight import Check, run_preflight

    # first: the hash that `run` with this configuration (file, environment, flags) names in every alert's provenance
    checks = [Check(True, "configuration", f"edge-agent {__version__}; config hash {config_hash(cfg)} (every alert, "
                                           "result and SR of `run` with these settings names it)")]
    checks += run_preflight(cfg)
    for c in checks:
        click.echo(c.line, err=not c.ok)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise ConfigError(f"{len(failed)} of {len(checks)} checks failed ({', '.join(c.what for c in failed)}); fix "
                          "what the FAIL line" + ("s say" if len(failed) > 1 else " says") + " and run --check again.")
    click.echo(f"configuration OK: {len(checks)} checks passed")


def _retry_dead_letters(cfg) -> None:
    """Dead PACS deliveries back to pending, with a fresh dead-letter clock (docs/RESULTS.md)."""
    from edge_agent.results.queue import PacsQueue

    path = cfg.state_dir / "pacs.sqlite3"
    if not path.is_file():
        click.echo(f"no PACS queue in {cfg.state_dir}: no dead letters to retry", err=True)
        return
    queue = PacsQueue(path)
    try:
        n = queue.retry_dead()
    finally:
        queue.close()
    click.echo(f"{n} PACS dead letter(s) queued again", err=True)


def _state_folder(cfg) -> None:
    """Create the state folder only where its parent exists, and say so when it is new."""
    state = cfg.state_dir
    try:
        if state.is_dir():
            return
        parent_exists = state.parent.is_dir()
    except OSError as exc:  # a folder above it this user cannot enter
        raise EdgeAgentError(f"The state folder {state} cannot be looked at by this user ({exc.strerror}); fix the "
                             "permissions of the folders above it or pass --state-dir (agent.state_dir).") from None
    if not parent_exists:
        raise EdgeAgentError(f"The state folder {state} does not exist and neither does its parent {state.parent}; "
                             f"create it (mkdir -p {state}) or pass --state-dir (agent.state_dir).")
    try:
        state.mkdir()
    except FileExistsError:
        raise EdgeAgentError(f"The state folder {state} is a file, not a folder; pass --state-dir "
                             "(agent.state_dir) with a folder.") from None
    except OSError as exc:
        raise EdgeAgentError(f"The state folder {state} cannot be created ({exc.strerror}); pass --state-dir "
                             "(agent.state_dir) with a writable folder.") from None
    logging.getLogger("edge_agent").warning("created the state folder %s (ledger, outbox, series state, "
                                            "quarantine); pass --state-dir to keep them elsewhere", state)
