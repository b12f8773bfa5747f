"""`edge-agent simulate`: a scanner writing phantom series into a folder."""

from __future__ import annotations

import click

from edge_agent.service.simulator import KINDS, Scanner

SYNTAXES = ("explicit", "implicit", "deflated", "rle", "jpegls", "j2k-lossless", "j2k")


@click.command("simulate")
@click.option("--to", "target", required=True, type=click.Path(file_okay=False), help="Folder to write into.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), default=("ich",), show_default=True,
              help="Series to write, in order (repeatable): ich = head CT with a bleed, normal = head CT "
                   "without, chest / nodule = chest CT without / with a nodule.")
@click.option("--count", type=int, default=1, show_default=True, help="Repeat the list of kinds this many times.")
@click.option("--rate", type=float, default=4.0, show_default=True, help="Slices per second (0: as fast as possible).")
@click.option("--style", type=click.Choice(["inplace", "rename", "movein"]), default="inplace", show_default=True,
              help="Write under the final name in chunks, write a dot-temp file and rename it, or write "
                   "outside the folder and move the file in.")
@click.option("--shuffle/--in-order", default=True, show_default=True, help="Deliver slices in shuffled order.")
@click.option("--seed", type=int, default=1000, show_default=True, help="Phantom seed of the first series.")
@click.option("--transfer-syntax", type=click.Choice(SYNTAXES), default="explicit", show_default=True)
@click.option("--slices", type=int, help="Slices per series (default: the phantom's own).")
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
