"""`edge-agent doctor` (implementation pending)."""

import click

from edge_agent.errors import NotImplementedYet


@click.command("doctor", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def doctor(**_kwargs):
    """Machine checks."""
    raise NotImplementedYet("'edge-agent doctor' is not implemented in this build yet.")
