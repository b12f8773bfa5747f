"""`edge-agent infer` (implementation pending)."""

import click

from edge_agent.errors import NotImplementedYet


@click.command("infer", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def infer(**_kwargs):
    """One-shot analysis."""
    raise NotImplementedYet("'edge-agent infer' is not implemented in this build yet.")
