"""`edge-agent simulate` (implementation pending)."""

import click

from edge_agent.errors import NotImplementedYet


@click.command("simulate", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def simulate(**_kwargs):
    """Simulate a scanner."""
    raise NotImplementedYet("'edge-agent simulate' is not implemented in this build yet.")
