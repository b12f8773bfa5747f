"""``edge-agent validate [MODEL_DIR] --data DIR [--labels CSV]``: a model measured on a site's own labelled data.

Every labelled series is analysed exactly as the agent would (same backend,
preprocessing, applicability checks and decision rule); the figures are
printed as a table on stdout, and ``--out DIR`` writes report.json and a
self-contained report.html. Nothing is ever changed: a suggested threshold
(``--max-false-alarms``), a suggested slice threshold (``--max-false-slices``) or
a what-if threshold (``--threshold``) is shown
beside the manifest's own, never applied. No patient identifier is printed
or written (series are ``#index`` and a UID hash). docs/VALIDATION.md.
"""

from __future__ import annotations

from pathlib import Path

import click

from edge_agent.errors import EdgeAgentError
from edge_agent.inference.backends import BACKENDS

EPILOG = ("Labels: DIR/positive/... and DIR/negative/... (or DIR/<finding>/positive|negative/...), or --labels CSV "
          "with columns series_instance_uid (or path, relative to DIR), label (1/0 or positive/negative), optional "
          "finding and sop_instance_uid (slice labels). Unlabelled series are counted, not analysed. "
          "See docs/VALIDATION.md.")


class _Progress:
    """One line per series on stderr; on a terminal also a bar (edge_agent.progress) below those lines."""

    def __init__(self, enabled: bool):
        from edge_agent.progress import progress

        self.enabled = enabled
        self.bar = progress(None, "validate", "series", enabled=None if enabled else False)

    def __call__(self, n: int, total: int, entry, text: str) -> None:
        if not self.enabled:
            return
        from edge_agent.progress import echo

        self.bar.set_total(total)
        echo(f"validate: [{n}/{total}] series #{entry.index} ({entry.hash}): {text}", err=True)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


@click.command("validate", epilog=EPILOG)
@click.argument("model_dir", required=False, type=click.Path(path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Folder of labelled DICOM series (searched recursively).")
@click.option("--labels", "labels_csv", type=click.Path(path_type=Path), default=None, metavar="CSV",
              help="Labels per series (or slice) instead of positive/ negative/ folders.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write report.json and report.html here.")
@click.option("--model", "model_names", multiple=True, metavar="NAME",
              help="Only validate this model (repeatable); default: every model in MODEL_DIR.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Backend to validate, as deployed: tensorrt on a Jetson with an engine, onnxrt elsewhere.")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N", help="ONNX Runtime threads.")
@click.option("--max-false-alarms", type=click.FloatRange(min=0.0, max=100.0), default=None, metavar="N",
              help="Suggest the threshold that keeps false alarms at or under N per 100 negative series "
                   "(a suggestion; never applied).")
@click.option("--max-false-slices", type=click.FloatRange(min=0.0, max=100.0), default=None, metavar="N",
              help="With slice labels: suggest the slice threshold that calls at most N per 100 slices of the "
                   "series with no positive slice (a suggestion for decision.slice_threshold; never applied).")
@click.option("--threshold", "what_if", type=click.FloatRange(min=0.0, max=1.0), default=None, metavar="T",
              help="Also show sensitivity/specificity if the threshold were T (what-if only; the manifest's "
                   "decision is what is reported and nothing is changed).")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def validate(model_dir: Path | None, data_dir: Path, labels_csv: Path | None, out_dir: Path | None,
             model_names: tuple[str, ...], backend: str, threads: int | None, max_false_alarms: float | None,
             max_false_slices: float | None, what_if: float | None, quiet: bool) -> None:
    """Measure a model on a site's own labelled series: AUC, sensitivity, specificity, false alarms.

    MODEL_DIR is one model folder (with manifest.json) or a folder of them;
    default: the shipped models. Demo models are trained on synthetic
    phantoms; they are not medical devices.
    """
    from edge_agent.inference.models import ModelSet  # noqa: PLC0415 - lazy: onnxruntime is slow to import
    from edge_agent.validation.labels import csv_labels, folder_labels, index_data, resolve_findings  # noqa: PLC0415
    from edge_agent.validation.report import text_table, write_html, write_json  # noqa: PLC0415
    from edge_agent.validation.run import run_validation  # noqa: PLC0415
    from edge_agent.validation.summary import build_report  # noqa: PLC0415

    if not data_dir.is_dir():
        raise EdgeAgentError(f"--data {data_dir} is not a folder; give the folder that holds the labelled series.")
    if model_dir is not None and not model_dir.exists():
        raise EdgeAgentError(f"Model folder {model_dir} does not exist; give a folder with manifest.json "
                             "(or a folder of model folders).")
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise EdgeAgentError(f"--out {out_dir} exists and is not a folder; choose a folder for the report.")
    models = ModelSet.load(model_dir, backend=backend, threads=threads, names=list(model_names) or None)
    try:
        index = index_data(data_dir)
        if not index.series:
            raise EdgeAgentError(f"No DICOM image series found in {data_dir}; put the labelled CT series there "
                                 f"({sum(index.left_out.values())} files were left out).")
        labels = csv_labels(labels_csv, index) if labels_csv is not None else folder_labels(index)
        labels = resolve_findings(labels, {m.name: [f.code for f in m.manifest.findings] for m in models})
        if not labels.series:
            where = (f"none of the rows of {labels_csv.name} matches a series in {data_dir}"
                     if labels_csv is not None else
                     f"no series in {data_dir} sits in a positive/ or negative/ folder")
            raise EdgeAgentError(f"No labelled series: {where}; see 'edge-agent validate --help' for the layouts.")
        if not quiet:
            click.echo(f"validate: {len(index.series)} series found, {len({u for u, _ in labels.series})} labelled; "
                       f"models: {', '.join(f'{m.name} {m.manifest.version}' for m in models)}", err=True)
        shown = _Progress(not quiet)
        try:
            targets = run_validation(index, labels, models, progress=shown)
        finally:
            shown.close()
    finally:
        models.close()
    report = build_report(index, labels, targets, max_false_alarms=max_false_alarms, what_if=what_if,
                          max_false_slices=max_false_slices)
    if not report["models"]:
        raise EdgeAgentError("No labelled series is labelled for a finding of the models loaded; check the "
                             "finding codes in the labels.")
    click.echo(text_table(report))
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            json_path = write_json(report, out_dir)
            html_path = write_html(report, targets, out_dir)
        except OSError as exc:
            raise EdgeAgentError(f"Cannot write the report to {out_dir} ({exc.strerror or exc}); choose a "
                                 "writable folder with --out.") from None
        click.echo(f"\nreport: {html_path}\n        {json_path}")
