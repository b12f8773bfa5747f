"""The site's data folder and its labels (docs/VALIDATION.md).

:func:`index_data` reads every file's header once (no pixels) and groups the
files by SeriesInstanceUID, so series can then be loaded one at a time and
memory stays flat however large the data set is.

Labels come from folders or a CSV:

- folders: ``DIR/positive/...`` and ``DIR/negative/...`` (the model's only
  finding), or ``DIR/<finding code>/positive|negative/...``;
- ``--labels CSV``: columns ``label`` (1/0, positive/negative, yes/no,
  true/false) and one of ``series_instance_uid``, ``path`` (relative to the
  data folder: a file or a folder) or ``sop_instance_uid`` (a slice label);
  optional ``finding`` (a code). A series whose only labels are slice labels
  is positive when any of its slices is.

Series without a label are counted, never guessed. Every problem with the
CSV is a :class:`LabelError`: one sentence naming the row.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.dicom import DicomError, iter_files, read_file
from edge_agent.errors import EdgeAgentError

POSITIVE = {"1", "positive", "pos", "yes", "y", "true", "t"}
NEGATIVE = {"0", "negative", "neg", "no", "n", "false", "f"}
FOLDER_LABELS = {"positive": True, "pos": True, "negative": False, "neg": False}
COLUMN_ALIASES = {
    "series_instance_uid": "series_instance_uid", "seriesinstanceuid": "series_instance_uid",
    "series_uid": "series_instance_uid", "sop_instance_uid": "sop_instance_uid",
    "sopinstanceuid": "sop_instance_uid", "sop_uid": "sop_instance_uid", "path": "path",
    "label": "label", "finding": "finding", "finding_code": "finding",
}


class LabelError(EdgeAgentError):
    """The labels (CSV or folders) cannot be used; the message is one sentence."""

    exit_code = 2


def uid_hash(uid: str) -> str:
    """The identifier reports use for a series: 10 hex digits of its UID's sha256 (not reversible)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


@dataclass
class SeriesEntry:
    """One series found in the data folder (files and SOP Instance UIDs, no pixels)."""

    index: int
    uid: str
    paths: list[str] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)

    @property
    def hash(self) -> str:
        return uid_hash(self.uid)


@dataclass
class DataIndex:
    root: Path
    series: list[SeriesEntry]
    left_out: Counter  # reason -> files

    def by_uid(self) -> dict[str, SeriesEntry]:
        return {e.uid: e for e in self.series}


def _header(path: str) -> tuple[list, DicomError | None]:
    try:
        return read_file(path, decode=False), None
    except DicomError as exc:
        return [], exc
    except Exception as exc:  # noqa: BLE001 - one unreadable file is left out, never the whole run
        return [], DicomError(path, f"could not be read ({type(exc).__name__})")


def index_data(root: Path, workers: int | None = None) -> DataIndex:
    """Group every CT file under ``root`` by series (headers only); series numbered in path order."""
    files, missing = iter_files(root)
    left_out: Counter = Counter(r.reason for r in missing)
    groups: dict[str, SeriesEntry] = {}
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for path, (slices, error) in zip(files, pool.map(_header, files)):
            if error is not None:
                left_out[error.reason] += 1
                continue
            for s in slices:
                entry = groups.setdefault(s.series_instance_uid, SeriesEntry(0, s.series_instance_uid))
                if not entry.paths or entry.paths[-1] != path:
                    entry.paths.append(path)
                entry.sop_uids.append(s.sop_instance_uid)
    series = sorted(groups.values(), key=lambda e: min(e.paths))
    for i, entry in enumerate(series, start=1):
        entry.index = i
    return DataIndex(Path(root), series, left_out)


@dataclass
class Labels:
    """Series labels ``(uid, finding or None) -> positive`` and slice labels per series and finding."""

    source: str
    series: dict[tuple[str, str | None], bool] = field(default_factory=dict)
    slices: dict[tuple[str, str | None], dict[str, bool]] = field(default_factory=dict)
    unmatched: int = 0      # label rows that matched no series in the data
    conflicting: int = 0    # series whose folders disagree (left unlabelled)

    def findings(self) -> set[str | None]:
        return {f for _, f in self.series} | {f for _, f in self.slices}


def folder_labels(index: DataIndex) -> Labels:
    """Labels from ``positive/``/``negative/`` folders (optionally under a finding-code folder)."""
    labels = Labels("folders")
    for entry in index.series:
        votes = set()
        for path in entry.paths:
            parts = [p.lower() for p in Path(os.path.relpath(path, index.root)).parts[:-1]]
            if parts and parts[0] in FOLDER_LABELS:
                votes.add((None, FOLDER_LABELS[parts[0]]))
            elif len(parts) > 1 and parts[1] in FOLDER_LABELS:
                votes.add((Path(os.path.relpath(path, index.root)).parts[0], FOLDER_LABELS[parts[1]]))
            else:
                votes.add(("", None))
        if len(votes) != 1:
            labels.conflicting += 1
            continue
        finding, value = votes.pop()
        if value is not None:
            labels.series[(entry.uid, finding)] = value
    return labels


def _label_value(raw: str, row: int, name: str) -> bool:
    value = raw.strip().lower()
    if value in POSITIVE:
        return True
    if value in NEGATIVE:
        return False
    shown = raw.strip()[:20] or "(empty)"
    raise LabelError(f"{name} row {row}: label {shown!r} is not 1/0 or positive/negative; fix that row.")


def _reader(path: Path):
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelError(f"Labels file {path} does not exist; give a CSV with columns series_instance_uid "
                         "(or path) and label.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"Labels file {path} cannot be read as UTF-8 text ({type(exc).__name__}); "
                         "save it as a UTF-8 CSV.") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise LabelError(f"Labels file {path} is empty; it needs a header row with series_instance_uid "
                         "(or path) and label.")
    first = lines[0]
    delimiter = max(",;\t", key=first.count) if any(c in first for c in ",;\t") else ","
    return csv.reader(lines, delimiter=delimiter)


def csv_labels(path: Path, index: DataIndex) -> Labels:
    """Labels from a CSV (see the module docstring); unknown series/paths are counted, bad rows raise."""
    name = Path(path).name
    rows = _reader(Path(path))
    header = [h.strip().lower().replace(" ", "_") for h in next(rows)]
    columns = {COLUMN_ALIASES[h]: i for i, h in enumerate(header) if h in COLUMN_ALIASES}
    if "label" not in columns:
        raise LabelError(f"{name} has no 'label' column (its columns: {', '.join(header)[:120]}); add one "
                         "with 1/0 or positive/negative.")
    if not {"series_instance_uid", "path", "sop_instance_uid"} & set(columns):
        raise LabelError(f"{name} has no series_instance_uid, path or sop_instance_uid column; add one so each "
                         "label can be matched to a series.")
    by_uid = index.by_uid()
    by_sop = {sop: e for e in index.series for sop in e.sop_uids}
    root = os.path.realpath(index.root)
    labels = Labels("csv")
    seen: dict[tuple, tuple[bool, int]] = {}
    count = 0

    def cell(row: list[str], key: str) -> str:
        i = columns.get(key)
        return row[i].strip() if i is not None and i < len(row) else ""

    for number, row in enumerate(rows, start=2):
        if not any(c.strip() for c in row):
            continue
        count += 1
        value = _label_value(cell(row, "label"), number, name)
        finding = cell(row, "finding") or None
        sop, uid, rel = cell(row, "sop_instance_uid"), cell(row, "series_instance_uid"), cell(row, "path")
        if not (sop or uid or rel):
            raise LabelError(f"{name} row {number} names no series (series_instance_uid, path or "
                             "sop_instance_uid is empty); fill it in or delete the row.")
        entries: list[SeriesEntry]
        if uid:
            entries = [by_uid[uid]] if uid in by_uid else []
        elif rel:
            target = os.path.realpath(os.path.join(root, rel))
            entries = [e for e in index.series
                       if any(os.path.realpath(p) == target or os.path.realpath(p).startswith(target + os.sep)
                              for p in e.paths)]
        else:
            entries = [by_sop[sop]] if sop in by_sop else []
        if sop:
            entries = [e for e in entries if sop in e.sop_uids]
        if not entries:
            labels.unmatched += 1
            continue
        for entry in entries:
            key = (entry.uid, finding, sop or None)
            if key in seen and seen[key][0] != value:
                raise LabelError(f"{name} rows {seen[key][1]} and {number} give the same "
                                 f"{'slice' if sop else 'series'} different labels; keep one.")
            seen[key] = (value, number)
            if sop:
                labels.slices.setdefault((entry.uid, finding), {})[sop] = value
            else:
                labels.series[(entry.uid, finding)] = value
    if count == 0:
        raise LabelError(f"{name} has a header but no label rows; add one row per series.")
    for key, slices in labels.slices.items():
        labels.series.setdefault(key, any(slices.values()))
    return labels


def resolve_findings(labels: Labels, model_findings: dict[str, list[str]]) -> Labels:
    """Replace the finding ``None`` by the only finding there is, or raise when that is ambiguous/unknown."""
    known = {code for codes in model_findings.values() for code in codes}
    for finding in labels.findings():
        if finding is not None and finding not in known:
            raise LabelError(f"Finding {finding!r} in the labels is not reported by "
                             f"{'model' if len(model_findings) == 1 else 'any of the models'} "
                             f"{', '.join(model_findings)} (findings: {', '.join(sorted(known))}); use one of "
                             "those codes.")
    if None not in labels.findings():
        return labels
    if len(known) != 1:
        raise LabelError(f"Labels without a finding code are ambiguous here: the models loaded "
                         f"({', '.join(model_findings)}) report {len(known)} findings ({', '.join(sorted(known))}); "
                         "validate one model (MODEL_DIR or --model), add a 'finding' column, or use "
                         "DIR/<finding>/positive|negative folders.")
    only = next(iter(known))
    out = Labels(labels.source, unmatched=labels.unmatched, conflicting=labels.conflicting)
    for (uid, f), v in labels.series.items():
        key = (uid, f or only)
        if key in out.series and out.series[key] != v:
            raise LabelError("A series is labelled both with and without a finding code, differently; keep one.")
        out.series[key] = v
    for (uid, f), sl in labels.slices.items():
        out.slices.setdefault((uid, f or only), {}).update(sl)
    return out
