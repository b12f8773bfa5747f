"""`edge-agent validate` end to end: phantom series, a tiny real ONNX model, folder and CSV labels, the report."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli  # noqa: E402
from edge_agent.testing.models import write_model_folder  # noqa: E402

from edge_agent.dicom import read_series  # noqa: E402
from edge_agent.inference.manifest import load_manifest  # noqa: E402
from edge_agent.inference.models import ModelSet  # noqa: E402
from edge_agent.phantoms import make_phantom, write_phantom  # noqa: E402
from edge_agent.service.analyse import analyse_series  # noqa: E402

PHI = ("DOE^JANE", "PID-4711-X", "ACC-0042-Z", "DOE")


def phantom(kind, seed):
    ph = make_phantom(kind, seed, matrix=96, slices=10, thickness_mm=5.0)
    ph.headers.patient_name, ph.headers.patient_id, ph.headers.accession_number = PHI[:3]
    return ph


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    model = write_model_folder(root / "model", "tiny_ich", weights=(20.0,), biases=(-3.0,))
    data = root / "data"
    truth = {}
    for i, (kind, folder) in enumerate([("ich", "positive"), ("normal", "negative")] * 3):
        ph = phantom(kind, 40 + i)
        write_phantom(ph, data / folder / f"case{i}")
        truth[ph.headers.series_instance_uid] = ph
    chest = phantom("chest", 7)
    chest.headers.body_part, chest.headers.study_description, chest.headers.series_description = (
        "CHEST", "CT CHEST", "THORAX 5mm")
    write_phantom(chest, data / "negative" / "chest")   # labelled, but the model does not apply: skipped
    write_phantom(phantom("normal", 9), data / "unsorted" / "x")   # not labelled: counted, not analysed
    (data / "notes.txt").write_text("not DICOM")
    return root, model, data, truth


def no_phi(*texts):
    for text in texts:
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
        for word in PHI:
            assert word not in text


def test_folder_labels_report(site, capsys):
    root, model, data, truth = site
    out = root / "out"
    manifest_before = (model / "manifest.json").read_bytes()
    rc, stdout, stderr = run_cli(capsys, "validate", str(model), "--data", str(data), "--out", str(out),
                                 "--max-false-alarms", "34", "--threshold", "0.3")
    assert rc == 0, stderr
    assert (model / "manifest.json").read_bytes() == manifest_before   # nothing applied
    assert "[1/7]" in stderr and "[7/7]" in stderr                        # progress, one line per series
    assert "tiny_ich 0.0.1" in stdout and "NOT applied" in stdout and "what if the threshold were 0.3" in stdout

    report = json.loads((out / "report.json").read_text())
    assert report["data"]["series"] == 8 and report["data"]["unlabelled_series"] == 1
    assert report["data"]["files_left_out"] == 1 and report["tool_version"] and report["date"].endswith("Z")
    (entry,) = report["models"]
    assert entry["name"] == "tiny_ich" and entry["backend"] == "onnxrt" and entry["finding"] == "ich"
    assert entry["sha256"] == hashlib.sha256((model / "model.onnx").read_bytes()).hexdigest()
    assert entry["decision"]["threshold"] == 0.5
    assert entry["series"] == {"analysed": 6, "skipped": 1, "rejected": 0, "not_assessable": 0}
    assert entry["series_by_label"]["skipped"] == {"positive": 0, "negative": 1}
    assert "does not apply" in entry["reasons"]["skipped"][0]["reason"] or \
        "no model applies" in entry["reasons"]["skipped"][0]["reason"]
    for key in ("auc", "auc_ci", "sensitivity", "sensitivity_ci", "specificity", "specificity_ci",
                "false_alarms_per_100", "version", "suggested_threshold", "what_if"):
        assert key in entry
    assert entry["suggested_threshold"]["applied"] is False and entry["what_if"]["applied"] is False

    # the figures are those of the product's own analysis of each series (independently recomputed here)
    with ModelSet.load(model, backend="onnxrt") as models:
        direct = {s.series_instance_uid: analyse_series(s, models) for s in read_series(data)}
    by_hash = {hashlib.sha256(u.encode()).hexdigest()[:10]: r for u, r in direct.items()}
    scores, labels = [], []
    for case in entry["cases"]:
        if case["status"] != "analysed":
            continue
        finding = by_hash[case["uid_sha256"]]["findings"][0]
        assert case["probability"] == pytest.approx(finding["probability"]) and case["positive"] == finding["positive"]
        scores.append(case["probability"])
        labels.append(case["label"])
    s, y = np.array(scores), np.array(labels, bool)
    pairs = [(p > n) + 0.5 * (p == n) for p in s[y] for n in s[~y]]
    assert entry["auc"] == pytest.approx(np.mean(pairs), abs=1e-4)
    called = s >= 0.5
    assert entry["counts"] == {"tp": int((called & y).sum()), "fn": int((~called & y).sum()),
                               "tn": int((~called & ~y).sum()), "fp": int((called & ~y).sum())}

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "ROC curve" in page and "Synthetic training" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page   # self-contained
    no_phi(page, (out / "report.json").read_text(), stdout, stderr)
    assert not any(uid in page or uid in stdout for uid in truth)   # series only as #index and a hash


def test_csv_labels_with_slice_labels(site, capsys, tmp_path):
    root, model, data, truth = site
    rows = ["series_instance_uid,path,label,finding,sop_instance_uid"]
    series = {s.series_instance_uid: s for s in read_series(data)}
    for n, (uid, ph) in enumerate(truth.items()):
        label = int(ph.finding is not None)
        if n == 0:   # this one by path, relative to --data
            folder = Path(series[uid].paths[0]).parent.relative_to(data)
            rows.append(f",{folder},{'positive' if label else 'negative'},,")
        elif n in (1, 2):  # slice labels only (a normal head, a bleed): the series label follows from them
            for sop, positive in zip(series[uid].sop_instance_uids, ph.slice_labels):
                rows.append(f"{uid},,{int(positive)},ich,{sop}")
        else:
            rows.append(f"{uid},,{label},ich,")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(capsys, "validate", str(model), "--data", str(data), "--labels", str(csv_path),
                                 "--out", str(out), "--quiet", "--max-false-slices", "10")
    assert rc == 0, stderr
    assert stderr == ""
    report = json.loads((out / "report.json").read_text())
    (entry,) = report["models"]
    assert entry["labelled_series"] == 6 and entry["series"]["analysed"] == 6
    assert report["data"]["labels_source"] == "csv" and report["data"]["unlabelled_series"] == 2
    sl = entry["slice_level"]
    assert sl["slices"] == 20 and sl["series"] == 2
    # slices called at the model's slice threshold, counted by hand from the slice labels of the two series
    bleed = truth[list(truth)[2]]
    assert sl["positive_slices"] == int(bleed.slice_labels.sum()) > 0
    assert sl["threshold"] == load_manifest(model).decision.slice_cut
    assert sl["counts"]["tp"] + sl["counts"]["fn"] == sl["positive_slices"]
    assert sum(sl["counts"].values()) == sl["slices"]
    assert sl["sensitivity"] == pytest.approx(sl["counts"]["tp"] / sl["positive_slices"], abs=1e-4)
    assert sl["specificity"] == pytest.approx(sl["counts"]["tn"] / (20 - sl["positive_slices"]), abs=1e-4)
    assert "slices called at" in stdout
    # the suggestion: at most 1 of the normal head's 10 slices called, never above the series threshold
    sug = sl["suggested_threshold"]
    assert sug["applied"] is False and sug["max_false_slices_per_100"] == 10
    assert sug["threshold"] <= load_manifest(model).decision.threshold
    assert sug["false_slices_per_100"] <= 10 and "not applied" in stdout and "suggested slice threshold" in stdout
    assert "Suggested slice threshold" in (out / "report.html").read_text()
    assert "per-slice AUC" in stdout
    no_phi((out / "report.html").read_text(), (out / "report.json").read_text(), stdout)


def one_sentence(rc, stderr):
    assert rc != 0
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_bad_inputs_are_one_sentence(site, capsys, tmp_path):
    root, model, data, truth = site
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    line = one_sentence(*run_cli(capsys, "validate", str(model), "--data", str(empty))[::2])
    assert "No DICOM image series" in line

    bad = tmp_path / "bad.csv"
    bad.write_text("series_instance_uid,outcome\n1.2.3,1\n")
    line = one_sentence(*run_cli(capsys, "validate", str(model), "--data", str(data), "--labels", str(bad))[::2])
    assert "no 'label' column" in line

    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"series_instance_uid,label,finding\n{next(iter(truth))},1,haemorrhage\n")
    line = one_sentence(*run_cli(capsys, "validate", str(model), "--data", str(data), "--labels", str(unknown))[::2])
    assert "'haemorrhage'" in line

    nothing = tmp_path / "nolabels"
    write_phantom(phantom("normal", 3), nothing / "series")
    line = one_sentence(*run_cli(capsys, "validate", str(model), "--data", str(nothing))[::2])
    assert "No labelled series" in line

    line = one_sentence(*run_cli(capsys, "validate", str(model), "--data", str(tmp_path / "missing"))[::2])
    assert "is not a folder" in line
    line = one_sentence(*run_cli(capsys, "validate", str(tmp_path / "nomodel"), "--data", str(data))[::2])
    assert "does not exist" in line
