"""`edge-agent simulate`: a scanner writing phantom series into a folder."""

from __future__ import annotations

import math

import click

from edge_agent.service.simulator import KINDS, MAX_SLICES, MIN_RATE, Scanner

SYNTAXES = ("explicit", "implicit", "deflated", "rle", "jpegls", "j2k-lossless", "j2k")


def _finite(ctx, param, value):
    """--rate: 0 (as fast as possible) or MIN_RATE slices per second or more; never nan or infinity."""
    if value is not None and (not math.isfinite(value) or 0 < value < MIN_RATE):
        raise click.BadParameter(f"{value} is not a rate the simulator can keep; give 0 (as fast as possible) or "
                                 f"{MIN_RATE:g} slices per second or more.", ctx=ctx, param=param)
    return value


@click.command("simulate")
@click.option("--to", "target", required=True, type=click.Path(file_okay=False), help="Folder to write into.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), default=("ich",), show_default=True,
              help="Series to write, in order (repeatable): ich = head CT with a bleed, normal = head CT "
                   "without, chest / nodule = chest CT without / with a nodule.")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Repeat the list of kinds this many times (1 or more).")
@click.option("--rate", type=click.FloatRange(min=0), default=4.0, show_default=True, callback=_finite,
              help="Slices per second (0: as fast as possible).")
@click.option("--style", type=click.Choice(["inplace", "rename", "movein"]), default="inplace", show_default=True,
              help="Write under the final name in chunks, write a dot-temp file and rename it, or write "
                   "outside the folder and move the file in.")
@click.option("--shuffle/--in-order", default=True, show_default=True, help="Deliver slices in shuffled order.")
@click.option("--seed", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Phantom seed of the first series (0 or more).")
@click.option("--transfer-syntax", type=click.Choice(SYNTAXES), default="explicit", show_default=True)
@click.option("--slices", type=click.IntRange(1, MAX_SLICES), default=None,
              help=f"Slices per series, 1 to {MAX_SLICES} (default: the phantom's own; each series is rendered "
                   "in memory, about 1 MB a slice).")
def simulate(target, kinds, count, rate, style, shuffle, seed, transfer_syntax, slices):
    """Write phantom CT series into TO like a scanner (synthetic data, not patients)."""
    scanner = Scanner(target, list(kinds) * count, rate=rate, style=style, shuffle=shuffle, seed=seed,
                      transfer_syntax=transfer_syntax, slices=slices,
                      on_slice=None)
    try:
        series = scanner.run()
    except KeyboardInterrupt:
        series = scanner.series
    for s in series:
        click.echo(f"{s.kind:7s} seed={s.seed} {len(s.delivered)} slices -> {s.folder} "
                   f"(SeriesInstanceUID {s.series_instance_uid})")
