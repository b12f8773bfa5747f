"""`edge-agent listen`: the reference consumer (print, deduplicate, send receipts).

The work is in :class:`edge_agent.alerts.consumer.AlertListener`; this command
only parses options and prints. Credentials and TLS material come from the
environment (EDGE_AGENT_MQTT_USERNAME / _PASSWORD / _CA_FILE / _CERT_FILE /
_KEY_FILE, each also as *_FILE), never from the command line.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import click

from edge_agent.alerts import MqttSettings
from edge_agent.errors import EdgeAgentError

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file
MAX_TIMEOUT_S = 365 * 24 * 3600.0       # beyond this a wait overflows the platform's time_t
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"  # without --broker and without a config that names one


def _a_number(ctx, param, value):
    """Refuse nan, which every range check lets through."""
    if value is not None and value != value:
        raise click.BadParameter("nan is not a number of seconds.", ctx=ctx, param=param)
    return value


def format_alert(payload: dict, status: str) -> str:
    """One readable line for an alert (and its disclaimer when the model was trained on phantoms)."""
    finding, study, model = payload["finding"], payload["study"], payload["model"]
    verdict = "POSITIVE" if finding.get("positive") else "negative"
    line = (f"{payload['timestamps'].get('raised', '')}  {'UPDATE' if status == 'update' else 'ALERT '} "
            f"{finding['code']} p={finding['probability']:.2f} {verdict} [{payload['state']} r{payload['revision']}]"
            f"  {payload['site']}/{payload['device']}  accession={study.get('accession_number') or '-'}"
            f"  series={study['series_instance_uid']}  model={model['name']} {model['version']}"
            f"  id={payload['alert_id']}")
    if payload.get("disclaimer"):
        line += "\n    " + payload["disclaimer"]
    return line


def check_store(store: Path) -> None:
    """Refuse a --store the listener cannot use, before anything is created or connected.

    The folder must exist (a typo must not create folders), and an existing file must be a SQLite
    database (an empty file is fine: SQLite makes it one).
    """
    parent = store.parent
    if not parent.is_dir():
        raise EdgeAgentError(f"The folder of --store {store} does not exist ({parent}); create it first or give a "
                             "path in an existing folder.")
    if not store.exists():
        return
    try:
        with open(store, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise EdgeAgentError(f"--store {store} cannot be read ({exc.strerror or exc}); check its permissions or "
                             "give another path.") from None
    if head and head != SQLITE_MAGIC:
        raise EdgeAgentError(f"--store {store} is not a SQLite database; give a new file name (the listener creates "
                             "it) or a store an earlier 'edge-agent listen' wrote.")


def listener_settings(config_path: Path | None, **flags) -> MqttSettings:
    """Flags > config file ([mqtt] section, its password file) > environment > defaults."""
    if config_path is None:
        return MqttSettings.from_env(**{"url": DEFAULT_BROKER, **{k: v for k, v in flags.items() if v is not None}})
    from edge_agent.config import load_config

    cfg = load_config(config_path)
    flags.setdefault("url", None)
    if flags["url"] is None and not cfg.mqtt.broker:
        flags["url"] = DEFAULT_BROKER
    return MqttSettings.from_config(cfg, **flags)


@click.command("listen")
@click.option("--broker", "url", default=None,
              help="Broker URL, mqtt://host:port or mqtts://host:port [default: the config's mqtt.broker, "
                   "else mqtt://127.0.0.1:1883].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Agent config file: its [mqtt] section supplies credentials, TLS material and the prefix.")
@click.option("--prefix", default=None, help="Topic prefix [default: edge-agent].")
@click.option("--site", default="+", show_default=True, help="Site to listen to (+ = every site).")
@click.option("--device", default="+", show_default=True, help="Device to listen to (+ = every device).")
@click.option("--group", default=None, help="Join shared subscription group NAME ($share/NAME/...).")
@click.option("--json", "json_lines", is_flag=True, help="Print each alert as one JSON line.")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Deduplication store (SQLite); with it the session survives restarts.")
@click.option("--no-receipts", is_flag=True, help="Do not send receipts (the agent keeps republishing).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Exit after N alerts (new or updated).")
@click.option("--timeout", type=click.FloatRange(min=0, max=MAX_TIMEOUT_S), default=None, callback=_a_number,
              help="Exit after S seconds (at most a year; without it: until stopped).")
@click.option("--consumer", default=None, help="Name sent in receipts and used in the client id.")
@click.option("--protocol", type=click.Choice(["auto", "5", "3.1.1"]), default=None, help="[default: auto]")
@click.option("--save-previews", "previews_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also subscribe to key-image previews and write each as DIR/<alert_id>-r<revision>.png|jpg "
                   "(DIR must exist).")
def listen(url, config_path, prefix, site, device, group, json_lines, store, no_receipts, count, timeout, consumer,
           protocol, previews_dir):
    """Subscribe to alerts, print each once, and send receipts so the agent stops republishing."""
    from edge_agent.alerts.consumer import AlertListener
    from edge_agent.config import check_environment

    check_environment()  # a typo in EDGE_AGENT_MQTT_PASSWORD & co. must not pass silently (with --config too)
    if store is not None:
        check_store(store)
    if previews_dir is not None and not previews_dir.is_dir():
        raise EdgeAgentError(f"--save-previews {previews_dir} is not an existing folder; create it first.")
    settings = listener_settings(config_path, url=url, prefix=prefix, protocol=protocol)
    url = settings.url
    shown = 0
    done = threading.Event()
    lock = threading.Lock()

    def on_alert(payload: dict, status: str) -> None:
        nonlocal shown
        with lock:
            if json_lines:
                click.echo(json.dumps(payload, separators=(",", ":")))
            else:
                click.echo(format_alert(payload, status))
            sys.stdout.flush()
            shown += 1
            if count is not None and shown >= count:
                done.set()

    def on_preview(payload: dict) -> None:
        from edge_agent.alerts.previews import save_preview

        try:
            path = save_preview(previews_dir, payload)
        except (OSError, ValueError) as exc:
            click.echo(f"listen: preview of {payload.get('alert_id')} not saved ({exc})", err=True)
            return
        with lock:  # on stderr: stdout stays one alert per line with --json
            click.echo(f"preview r{payload['revision']} of {payload['alert_id']}: {path} "
                       f"({payload['width']}x{payload['height']} {payload['mime']})", err=True)

    listener = AlertListener(settings, on_alert=on_alert, store_path=store, send_receipts=not no_receipts,
                             site=site, device=device, group=group, consumer=consumer,
                             on_preview=on_preview if previews_dir is not None else None)
    try:
        listener.start()
    except sqlite3.Error as exc:  # a damaged database behind a valid header, a read-only file, ...
        raise EdgeAgentError(f"--store {store} cannot be used as the deduplication store ({exc}); move it aside "
                             "or give another path.") from None
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        if not json_lines:
            click.echo(f"listening on {listener.subscription} at {url} (MQTT {listener.protocol}); "
                       "Ctrl-C to stop", err=True)
        done.wait(timeout)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        listener.stop()
    counts = listener.counts
    click.echo(f"listen: {counts['new']} new, {counts['update']} updates, {counts['duplicate']} duplicates, "
               f"{counts['receipts']} receipts sent"
               + (f", {counts['previews']} previews received" if previews_dir is not None else ""), err=True)
