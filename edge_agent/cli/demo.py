"""`edge-agent demo`: a real alert end to end, with no external services."""

from __future__ import annotations

import click

from edge_agent.errors import EdgeAgentError


@click.command("demo")
@click.option("--rate", type=click.FloatRange(min=0), default=8.0, show_default=True,
              help="Simulated scanner speed, slices/s (0: as fast as possible).")
@click.option("--settle", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True, help="Quiet period before a result is final.")
@click.option("--seed", type=click.IntRange(min=0), default=7, show_default=True, help="Phantom seed (0 or more).")
@click.option("--keep", type=click.Path(file_okay=False), help="Keep the demo's files in this folder.")
@click.option("--mode", type=click.Choice(["live", "shadow"]), default="live", show_default=True,
              help="shadow: the silent trial — results say what would have alerted, no alert is raised.")
@click.option("--save-previews", "previews_dir", type=click.Path(file_okay=False), default=None,
              help="Write each alert's key-image preview (PNG/JPEG) into this folder (created; default with "
                   "--keep: KEEP/previews).")
def demo(rate, settle, seed, keep, mode, previews_dir):
    """Embedded broker + agent + simulated scanner + listener: shows an alert and its timing."""
    import logging
    from pathlib import Path

    from edge_agent.service.demo import run_demo

    if not click.get_current_context().find_root().params.get("verbose"):
        # The timeline below shows every alert; the daemon's own ALERT log lines would repeat it, and its
        # story (banner, series opened/decided, summary; edge_agent.logs) too: -v shows them.
        from edge_agent.logs import AGENT_LOG, BROKER_LOG, PIPELINE_LOG, SERIES_LOG

        for name in (PIPELINE_LOG, AGENT_LOG, SERIES_LOG):
            logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger(BROKER_LOG).setLevel(logging.WARNING)  # trouble with the embedded broker still shows

    timeline = run_demo(rate=rate, settle=settle, seed=seed, keep=Path(keep) if keep else None, echo=click.echo,
                        mode=mode, save_previews=Path(previews_dir) if previews_dir else None)
    if mode == "shadow":
        if timeline.alerts:
            raise EdgeAgentError("the demo raised an alert in shadow mode; that is a bug, please report it.")
        if not any(f.get("would_alert") for _, r in timeline.results for f in r.get("findings", [])):
            raise EdgeAgentError("the demo's bleed would not have alerted; run it again with -v to see the log.")
        return
    if not any(p.get("finding", {}).get("positive") for _, p in timeline.alerts):
        raise EdgeAgentError("the demo raised no alert; run it again with -v to see the agent's log.")
