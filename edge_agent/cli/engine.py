"""`edge-agent convert|calibrate|inspect` (implementation pending)."""

import click

from edge_agent.errors import NotImplementedYet

_CTX = {"ignore_unknown_options": True, "allow_extra_args": True}


@click.command("convert", context_settings=_CTX)
def convert(**_kwargs):
    """Convert."""
    raise NotImplementedYet("'edge-agent convert' is not implemented in this build yet.")


@click.command("calibrate", context_settings=_CTX)
def calibrate(**_kwargs):
    """Calibrate."""
    raise NotImplementedYet("'edge-agent calibrate' is not implemented in this build yet.")


@click.command("inspect", context_settings=_CTX)
def inspect_cmd(**_kwargs):
    """Inspect."""
    raise NotImplementedYet("'edge-agent inspect' is not implemented in this build yet.")
