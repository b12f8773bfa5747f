"""``edge-agent infer PATH...``: analyse DICOM files/folders once, JSON Lines out.

stdout carries one JSON object per series (the contract: docs/ALERTS.md,
Payload reference, the ``result`` of a Result payload:
``series_instance_uid``, ``study_instance_uid``, ``slices``, ``status``
``analysed|skipped|rejected`` with ``reason``, ``findings``) and nothing else.
``--explain`` adds an ``explain`` field (per model, every applicability
rule and its verdict, ``ModelSet.explain``) and prints the same on stderr;
``--config`` applies a site's ``[models.<name>.applies_to]`` overrides.
Every file left out (not DICOM, not an image we analyse, broken) is reported
on stderr as one line ``edge-agent: left out PATH: REASON``; files left out of
a series that was assembled are also counted in that series' ``warnings``.
Exit 0 when every series found was reported (whatever its status); non-zero
with one sentence when no path exists, no DICOM series was found, or the
engines folder is unusable.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_agent.dicom import scan
from edge_agent.errors import EdgeAgentError
from edge_agent.inference.backends import BACKENDS
from edge_agent.inference.models import ModelSet
from edge_agent.service.analyse import analyse_series


EPILOG = ("Output: one JSON object per series on stdout (series_instance_uid, study_instance_uid, slices, "
          "status analysed|skipped|rejected, reason, findings [{code, label, probability, positive, severity, "
          "threshold, slice_threshold, slices_positive, model, model_version, key_slices [{index, sop_instance_uid, "
          "position_mm, probability, positive}]}], models [{name, version, backend, sha256, precision, "
          "engine_fingerprint, status}], provenance {agent_version, config_hash}, timings_ms, warnings, disclaimer; "
          "with --explain: explain [{model, outcome, reason, rules [{rule, result, detail}]}]). Files left out are "
          "listed on stderr, one line each. No patient identifiers are printed (Patient Age decides the age rule "
          "only).")


@click.command("infer", epilog=EPILOG)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--engines", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Folder of models (<name>/manifest.json); default: the shipped models.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Inference backend: TensorRT where an engine and TensorRT exist (auto), or force one.")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="ONNX Runtime intra-op threads (default: one per core).")
@click.option("--model", "model_names", multiple=True, metavar="NAME",
              help="Only use this model (repeatable).")
@click.option("--pretty", is_flag=True, help="Indent the JSON (one object still per series).")
@click.option("--explain", is_flag=True,
              help="Say, per series and model, which applicability rule matched or refused: an 'explain' field "
                   "in each JSON object, and a readable summary on stderr.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="FILE", help="Agent config (TOML/YAML) whose [models.<name>.applies_to] site overrides "
                                   "apply, as they do in `edge-agent run`.")
def infer(paths: tuple[Path, ...], engines: Path | None, backend: str, threads: int | None,
          model_names: tuple[str, ...], pretty: bool, explain: bool, config_file: Path | None) -> None:
    """Analyse DICOM files/folders once; print one JSON object per series.

    Demo models are trained on synthetic phantoms; they are not medical devices.
    """
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise EdgeAgentError(f"{missing[0]} does not exist; give existing DICOM files or folders.")
    overrides = alert_at = None
    hashed = None  # the config hash: of the --config given (with the environment), none without one
    if config_file is not None:
        from edge_agent.config import config_hash, load_config  # noqa: PLC0415 - only with --config

        site = load_config(config_file)
        overrides, alert_at = site.applies_to_overrides(), site.alert_at_overrides()
        hashed = config_hash(site)
    from edge_agent.results.algorithm import agent_provenance  # noqa: PLC0415

    provenance = agent_provenance(hashed)
    models = ModelSet.load(engines, backend=backend, threads=threads, names=list(model_names) or None,
                           overrides=overrides, alert_at=alert_at)
    try:
        report = scan(list(paths))
        left_out = list(report.rejected) + [r for s in report.series for r in (getattr(s, "rejected", None) or [])]
        for path, reason in dict.fromkeys((str(r.path), r.reason) for r in left_out):
            click.echo(f"edge-agent: left out {path}: {reason}", err=True)
        if not report.series:
            where = str(paths[0]) if len(paths) == 1 else f"the {len(paths)} paths given"
            if left_out:
                raise EdgeAgentError(f"No DICOM image series found in {where}; point infer at CT DICOM files or "
                                     "folders (left-out files are listed above).")
            raise EdgeAgentError(f"No DICOM image series found in {where}: "
                                 f"{'it holds' if len(paths) == 1 else 'they hold'} no files to read (names "
                                 "starting with '.' are skipped); point infer at CT DICOM files or folders.")
        for series in report.series:
            result = analyse_series(series, models)
            result["provenance"] = dict(provenance)
            if explain:
                result["explain"] = models.explain(series)
                _print_explain(series.series_instance_uid, result["explain"])
            click.echo(json.dumps(result, indent=2 if pretty else None))
    finally:
        models.close()


def _print_explain(uid: str, entries: list[dict]) -> None:
    """The explain entries of one series on stderr: a line per model, then its rules."""
    for entry in entries:
        verdict = entry["outcome"].replace("_", " ")
        click.echo(f"edge-agent: explain {uid} model {entry['model']}: {verdict}"
                   + (f" ({entry['reason']})" if entry["reason"] else ""), err=True)
        for rule in entry["rules"]:
            click.echo(f"    {rule['result']:<12} {rule['rule']}: {rule['detail']}", err=True)
