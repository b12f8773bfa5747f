"""`edge-agent run` (implementation pending)."""

import click

from edge_agent.errors import NotImplementedYet


@click.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def run(**_kwargs):
    """Run the agent daemon."""
    raise NotImplementedYet("'edge-agent run' is not implemented in this build yet.")
