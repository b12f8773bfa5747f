"""`edge-agent demo` (implementation pending)."""

import click

from edge_agent.errors import NotImplementedYet


@click.command("demo", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def demo(**_kwargs):
    """Demo."""
    raise NotImplementedYet("'edge-agent demo' is not implemented in this build yet.")
