"""`edge-agent bench` (implementation pending)."""

import click

from edge_agent.errors import NotImplementedYet


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def bench(**_kwargs):
    """Benchmarks."""
    raise NotImplementedYet("'edge-agent bench' is not implemented in this build yet.")
