"""The new applies_to keys in manifests (validation sentences) and per-site overrides of them."""

import json

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from edge_agent.testing.models import manifest_dict, write_model_folder
from edge_agent.config import load_config
from edge_agent.dicom import read_file
from edge_agent.errors import ConfigError
from edge_agent.inference.manifest import ManifestError, load_manifest, parse_manifest
from edge_agent.inference.models import ModelSet


def applies(**rules):
    base = manifest_dict()["applies_to"]
    return {**base, **rules}


def test_new_keys_parse(tmp_path):
    m = parse_manifest(manifest_dict(applies_to=applies(
        kernels={"refuse_kinds": ["bone", "lung"], "allow": ["h31s"], "manufacturers": {"Hitachi": {"refuse": ["1*"]}},
                 "unknown": "refuse"},
        contrast="refuse", cardiac_gating="refuse", kvp=[80, 140], patient_age_years=[18, None], qa="refuse",
        qa_keywords=["qa", "daily"])), tmp_path, verify=False)
    a = m.applies_to
    assert a.kernels.refuse_kinds == ("bone", "lung") and a.kernels.allow == ("H31S",)
    assert a.kernels.manufacturers == (("HITACHI", (), ("1*",)),) and a.kernels.unknown == "refuse"
    assert (a.contrast, a.cardiac_gating, a.qa) == ("refuse", "refuse", "refuse")
    assert a.kvp == (80.0, 140.0) and a.patient_age_years == (18.0, None) and a.qa_keywords == ("QA", "DAILY")
    default = parse_manifest(manifest_dict(), tmp_path, verify=False).applies_to
    assert default.kernels is None and default.contrast == "allow" and default.qa == "allow"
    assert "CATPHAN" in default.qa_keywords  # the documented default list


@pytest.mark.parametrize("rules, fragment", [
    ({"contrast": "never"}, "'applies_to.contrast' must be one of refuse, allow, require, not 'never'"),
    ({"cardiac_gating": "require"}, "'applies_to.cardiac_gating' must be one of refuse, allow"),
    ({"kernels": {"refuse_kinds": ["crunchy"]}}, "'applies_to.kernels.refuse_kinds[0]' must be one of soft, sharp"),
    ({"kernels": {"refuse": "BONE"}}, "'applies_to.kernels.refuse' must be a list of non-empty strings"),
    ({"kernels": {"sharpness": 3}}, "'applies_to.kernels.sharpness' is not a known key"),
    ({"kernels": {"unknown": "maybe"}}, "'applies_to.kernels.unknown' must be one of allow, refuse"),
    ({"kernels": {"manufacturers": ["GE"]}}, "'applies_to.kernels.manufacturers' must be an object"),
    ({"kvp": 120}, "'applies_to.kvp' must be [minimum, maximum] in kV or null"),
    ({"kvp": [140, 80]}, "'applies_to.kvp[1]' must be ≥ 140"),
    ({"patient_age_years": [None, 18]}, "'applies_to.patient_age_years[0]' must be a finite number"),
    ({"qa": True}, "'applies_to.qa' must be a non-empty string"),
    ({"qa_keywords": "QA"}, "'applies_to.qa_keywords' must be a list of non-empty strings"),
])
def test_bad_new_keys_are_one_sentence(tmp_path, rules, fragment):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest_dict(applies_to=applies(**rules))))
    with pytest.raises(ManifestError) as err:
        load_manifest(path, verify=False)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_site_override_changes_a_decision_on_a_real_header(tmp_path):
    """pydicom's real GE routine brain is 1.25 mm: refused by a 2-5 mm model, analysed once the site widens it."""
    folder = write_model_folder(tmp_path / "engines" / "tiny_ich", applies_to=applies(slice_thickness_mm=[2, 5],
                                                                                          qa="refuse"))
    head = read_file(get_testdata_file("dicomdirtests/77654033/CT2/17136", download=False), decode=False)[0]
    [(_, why)] = ModelSet.load(folder).route(head)
    assert why.rule == "slice_thickness" and why.startswith("slice thickness 1.25 mm is outside the 2–5 mm")
    conf = tmp_path / "site.toml"
    conf.write_text("[models.tiny_ich.applies_to]\nslice_thickness_mm = [0.5, 6.0]\n")
    overrides = load_config(conf, environ={}).applies_to_overrides()
    assert overrides == {"tiny_ich": {"slice_thickness_mm": [0.5, 6.0]}}
    models = ModelSet.load(folder, overrides=overrides)
    [(_, why)] = models.route(head)
    assert why is None
    a = models["tiny_ich"].manifest.applies_to
    assert a.slice_thickness_mm == (0.5, 6.0) and a.qa == "refuse"  # other keys stay the manifest's
    assert load_manifest(folder, verify=False).applies_to.slice_thickness_mm == (2.0, 5.0)  # file untouched


def test_site_override_of_kernels_replaces_the_whole_key(tmp_path):
    folder = write_model_folder(tmp_path / "e" / "tiny_ich", applies_to=applies(
        kernels={"refuse_kinds": ["bone", "lung", "sharp"]}))
    info = read_file(get_testdata_file("dicomdirtests/77654033/CT2/17136", download=False), decode=False)[0]
    info.convolution_kernel = ("BONE",)
    assert ModelSet.load(folder).route(info)[0][1].rule == "kernels"
    models = ModelSet.load(folder, overrides={"tiny_ich": {"kernels": {"refuse_kinds": ["lung"]}}})
    assert models.route(info)[0][1] is None


def test_override_of_an_unknown_model_or_with_a_bad_value_is_one_sentence(tmp_path):
    folder = write_model_folder(tmp_path / "e" / "tiny_ich")
    with pytest.raises(ManifestError, match=r"sets \[models.brain\] but .* has no model named 'brain'"):
        ModelSet.load(tmp_path / "e", overrides={"brain": {"qa": "refuse"}})
    with pytest.raises(ConfigError) as err:
        ModelSet.load(folder, overrides={"tiny_ich": {"contrast": "sometimes"}})
    assert "'models.tiny_ich.applies_to.contrast' must be one of refuse, allow, require" in str(err.value)
    assert ModelSet.load(folder, overrides={}).models  # an empty override table changes nothing


def test_explain_shows_the_override_and_pixels_are_never_needed(tmp_path):
    folder = write_model_folder(tmp_path / "e" / "tiny_ich")
    models = ModelSet.load(folder, overrides={"tiny_ich": {"kvp": [100, 130]}})
    info = read_file(get_testdata_file("dicomdirtests/77654033/CT2/17136", download=False), decode=False)[0]
    assert info.hu is None and info.stored is None  # header only
    [entry] = models.explain(info)
    kvp = next(r for r in entry["rules"] if r["rule"] == "kvp")
    assert kvp == {"rule": "kvp", "result": "refused",
                   "detail": "the tube voltage 140 kV is outside the 100–130 kV model tiny_ich was made for"}
    assert entry["outcome"] == "refused" and np.isfinite(info.kvp)
