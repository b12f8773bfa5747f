"""`edge-agent listen` (implementation pending)."""

import click

from edge_agent.errors import NotImplementedYet


@click.command("listen", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def listen(**_kwargs):
    """Reference consumer."""
    raise NotImplementedYet("'edge-agent listen' is not implemented in this build yet.")
