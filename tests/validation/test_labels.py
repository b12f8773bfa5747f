"""Labels from folders and CSVs, on a hand-made data index (no DICOM needed)."""

from pathlib import Path

import pytest

from edge_agent.validation.labels import (
    DataIndex, LabelError, SeriesEntry, csv_labels, folder_labels, resolve_findings,
)


def make_index(root: Path, layout: dict[str, list[str]]) -> DataIndex:
    series = []
    for i, (uid, rels) in enumerate(layout.items(), start=1):
        series.append(SeriesEntry(i, uid, [str(root / r) for r in rels], [f"{uid}.{k}" for k in range(len(rels))]))
    return DataIndex(root, series, __import__("collections").Counter())


@pytest.fixture
def index(tmp_path):
    return make_index(tmp_path, {
        "1.1": ["positive/a/1.dcm", "positive/a/2.dcm"],
        "1.2": ["Negative/b/1.dcm"],
        "1.3": ["ich/positive/c/1.dcm"],
        "1.4": ["other/d/1.dcm"],
        "1.5": ["positive/e/1.dcm", "negative/e/2.dcm"],
        "1.6": ["x.dcm"],
    })


def test_folder_layouts(index):
    labels = folder_labels(index)
    assert labels.series == {("1.1", None): True, ("1.2", None): False, ("1.3", "ich"): True}
    assert labels.conflicting == 1  # 1.5 spans positive/ and negative/


def write(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_uid_path_sop_rows_bom_and_semicolons(tmp_path, index):
    path = write(tmp_path, "\ufeffSeriesInstanceUID;Path;Label;Finding;SOP Instance UID\n"
                           "1.1;;positive;ich;\n"
                           ";other/d;0;;\n"
                           "9.9;;1;;\n"
                           ";;1;ich;1.2.0\n"
                           "1.6;;no;ich;1.6.0\n\n")
    labels = csv_labels(path, index)
    assert labels.series[("1.1", "ich")] is True
    assert labels.series[("1.4", None)] is False
    assert labels.series[("1.2", "ich")] is True          # from its only slice label
    assert labels.slices[("1.2", "ich")] == {"1.2.0": True}
    assert labels.series[("1.6", "ich")] is False
    assert labels.unmatched == 1


@pytest.mark.parametrize("text,words", [
    ("series_instance_uid,outcome\n1.1,1\n", "no 'label' column"),
    ("label,comment\n1,x\n", "no series_instance_uid, path or sop_instance_uid column"),
    ("series_instance_uid,label\n1.1,maybe\n", "row 2: label 'maybe'"),
    ("series_instance_uid,label\n1.1,1\n1.1,0\n", "rows 2 and 3"),
    ("series_instance_uid,label\n", "no label rows"),
    ("", "is empty"),
    ("series_instance_uid,label\n,1\n", "row 2 names no series"),
])
def test_bad_csv_is_one_sentence(tmp_path, index, text, words):
    with pytest.raises(LabelError) as info:
        csv_labels(write(tmp_path, text), index)
    message = str(info.value)
    assert words in message and "\n" not in message and message.endswith(".")


def test_missing_csv(tmp_path, index):
    with pytest.raises(LabelError, match="does not exist"):
        csv_labels(tmp_path / "nope.csv", index)


def test_resolve_findings(index):
    labels = folder_labels(index)
    with pytest.raises(LabelError, match="ambiguous"):
        resolve_findings(labels, {"a": ["ich"], "b": ["lung_nodule"]})
    with pytest.raises(LabelError, match="Finding 'ich'"):
        resolve_findings(labels, {"lung": ["lung_nodule"]})
    resolved = resolve_findings(labels, {"ich_model": ["ich"]})
    assert resolved.series == {("1.1", "ich"): True, ("1.2", "ich"): False, ("1.3", "ich"): True}
