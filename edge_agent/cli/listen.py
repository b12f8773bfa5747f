"""`edge-agent listen`: the reference consumer (print, deduplicate, send receipts).

The work is in :class:`edge_agent.alerts.consumer.AlertListener`; this command
only parses options and prints. Credentials and TLS material come from the
environment (EDGE_AGENT_MQTT_USERNAME / _PASSWORD / _CA_FILE / _CERT_FILE /
_KEY_FILE, each also as *_FILE), never from the command line.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import click

from edge_agent.alerts import MqttSettings


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


def listener_settings(config_path: Path | None, **flags) -> MqttSettings:
    """Flags > config file ([mqtt] section, its password file) > environment > defaults."""
    values = {}
    if config_path is not None:
        from edge_agent.config import load_config

        cfg = load_config(config_path)
        m = cfg.mqtt
        values = {"url": m.broker or None, "prefix": m.prefix, "protocol": m.protocol, "username": m.username or None,
                  "password": cfg.mqtt_password(), "ca_file": m.ca_file or None, "cert_file": m.cert_file or None,
                  "key_file": m.key_file or None, "tls_insecure": m.tls_insecure or None}
    values.update({k: v for k, v in flags.items() if v is not None})
    values.setdefault("url", None)
    if values["url"] is None:
        values["url"] = "mqtt://127.0.0.1:1883"
    return MqttSettings.from_env(**values)


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
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Exit after S seconds.")
@click.option("--consumer", default=None, help="Name sent in receipts and used in the client id.")
@click.option("--protocol", type=click.Choice(["auto", "5", "3.1.1"]), default=None, help="[default: auto]")
def listen(url, config_path, prefix, site, device, group, json_lines, store, no_receipts, count, timeout, consumer,
           protocol):
    """Subscribe to alerts, print each once, and send receipts so the agent stops republishing."""
    from edge_agent.alerts.consumer import AlertListener

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

    listener = AlertListener(settings, on_alert=on_alert, store_path=store, send_receipts=not no_receipts,
                             site=site, device=device, group=group, consumer=consumer)
    listener.start()
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
               f"{counts['receipts']} receipts sent", err=True)
