"""``edge-agent report``: what the agent did — and in shadow mode would have alerted — over a period."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edge_agent.service.report import load, parse_period, summarise, table


@click.command("report")
@click.option("--since", default="7d", show_default=True, metavar="PERIOD",
              help="How far back: a number and s, m, h, d or w (e.g. 24h, 7d).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="The agent's state folder (default: agent.state_dir of --config, or its default).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="The agent's config file, to find its state folder.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
def report(since: str, state_dir: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Per model and scanner: series analysed, skipped, rejected, not assessable; alerts (live) or
    would-have-alerted (shadow); decision latency. Reads the agent's state; safe while it runs."""
    seconds = parse_period(since)
    if state_dir is None:
        from edge_agent.config import load_config

        state_dir = load_config(config_path).state_dir()
    now = time.time()
    rows = summarise(load(state_dir, seconds, now))
    if as_json:
        click.echo(json.dumps({"since": since, "state_dir": str(state_dir), "models": rows}, indent=2))
        return
    if not rows:
        click.echo(f"No series were decided in the last {since} (state: {state_dir}).")
        return
    click.echo(f"edge-agent report: the last {since} (state: {state_dir})")
    click.echo(table(rows))
    for r in rows:
        for reason, n in r["reasons"].items():
            click.echo(f"  {r['model']}: {n} × {reason}")
    if any(r["mode"] == "shadow" for r in rows):
        click.echo("Shadow models raised no alerts; 'would' counts what they would have alerted. Going live is "
                   "a config change (inference.mode or [models.<name>] mode).")
