"""`edge-agent infer --explain` and `--config`: which rule matched or refused; Patient Age never printed."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from edge_agent.testing.models import write_model_folder  # noqa: E402

from cli_helpers import run_cli  # noqa: E402
from edge_agent.cli import cli  # noqa: E402
from edge_agent.dicom.synth import SeriesHeaders, write_series  # noqa: E402

AGE = "047Y"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    engines = root / "engines"
    write_model_folder(engines / "tiny_ich", applies_to={
        "modality": ["CT"], "body_part": ["HEAD"], "slice_thickness_mm": [0.5, 6.0], "min_slices": 4,
        "kernels": {"refuse_kinds": ["bone", "lung", "sharp"]}, "qa": "refuse", "patient_age_years": [18, None]})
    vol = np.full((6, 32, 32), 30.0, np.float32)
    soft = SeriesHeaders(extra={"Manufacturer": "SIEMENS", "ConvolutionKernel": ["Hr38", "3"], "PatientAge": AGE})
    bone = SeriesHeaders(series_description="HEAD 1mm BONE", extra={"Manufacturer": "GE MEDICAL SYSTEMS",
                                                                     "ConvolutionKernel": "BONE", "PatientAge": AGE})
    write_series(vol, root / "dicom" / "soft", (5.0, 0.5, 0.5), soft)
    write_series(vol, root / "dicom" / "bone", (5.0, 0.5, 0.5), bone)
    return root, engines, {soft.series_instance_uid: "soft", bone.series_instance_uid: "bone"}


def run(data, *extra):
    root, engines, names = data
    result = CliRunner().invoke(cli, ["infer", str(root / "dicom"), "--engines", str(engines), "--backend",
                                      "onnxrt", "--threads", "1", *extra])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]  # JSON Lines stay valid
    return {names[o["series_instance_uid"]]: o for o in lines}, result


def test_explain_field_and_stderr(data):
    results, result = run(data, "--explain")
    assert set(results) == {"soft", "bone"}
    assert results["soft"]["status"] == "analysed"
    assert results["bone"]["status"] != "analysed"
    assert results["bone"]["reason"].startswith("tiny_ich: reconstruction kernel BONE is a bone kernel") or \
        "reconstruction kernel BONE is a bone kernel" in results["bone"]["reason"]
    [entry] = results["bone"]["explain"]
    assert entry["model"] == "tiny_ich" and entry["outcome"] == "refused"
    verdicts = {r["rule"]: r["result"] for r in entry["rules"]}
    assert verdicts["kernels"] == "refused" and verdicts["patient_age"] == "matched" and verdicts["qa"] == "matched"
    [soft] = results["soft"]["explain"]
    assert soft["outcome"] == "applies" and soft["reason"] is None
    assert next(r for r in soft["rules"] if r["rule"] == "kernels")["detail"] == \
        "reconstruction kernel Hr38 is a soft-tissue kernel"
    assert "model tiny_ich: refused (reconstruction kernel BONE" in result.stderr
    assert "refused      kernels:" in result.stderr
    assert AGE not in result.stdout + result.stderr and "47 year" not in result.stdout + result.stderr


def test_without_explain_no_field_and_no_age(data):
    results, result = run(data)
    assert all("explain" not in o for o in results.values())
    assert AGE not in result.stdout + result.stderr


def test_config_override_changes_the_decision(data, tmp_path, capsys):
    conf = tmp_path / "site.toml"
    conf.write_text('[models.tiny_ich.applies_to]\nkernels = {refuse_kinds = ["lung"]}\n')
    results, result = run(data, "--config", str(conf), "--explain")
    assert results["bone"]["status"] == "analysed"
    assert next(r for r in results["bone"]["explain"][0]["rules"] if r["rule"] == "kernels")["result"] == "matched"
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.tiny_ich.applies_to]\nqa = "perhaps"\n')
    root, engines, _ = data
    code, out, err = run_cli(capsys, "infer", str(root / "dicom"), "--engines", str(engines), "--config", str(bad))
    assert code != 0 and out == "" and "must be one of refuse, allow" in err and "Traceback" not in err
