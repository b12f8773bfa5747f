"""Applicability rules on real DICOM headers: each rule refuses and allows; vendor kernels; Refusal type."""

import pickle
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edge_agent.testing.models import write_model_folder
from edge_agent.dicom import read_file
from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.inference.applicability import Refusal, age_years
from edge_agent.inference.models import ModelSet

HEAD = {"modality": ["CT"], "body_part": ["HEAD", "BRAIN"], "description_keywords": ["HEAD", "BRAIN"],
        "exclude_keywords": ["CTA", "ANGIO"], "slice_thickness_mm": [0.5, 6.0], "min_slices": 4}
ICH_RULES = {"kernels": {"refuse_kinds": ["bone", "lung", "sharp"]}, "contrast": "refuse", "qa": "refuse",
             "kvp": [80, 140], "patient_age_years": [18, None]}


def models_with(tmp_path, name="tiny_ich", **rules):
    folder = write_model_folder(tmp_path / "engines" / name, name=name, applies_to={**HEAD, **rules})
    return ModelSet.load(folder)


def header(tmp_path, study="CT HEAD", series="AXIAL 5mm", body_part="HEAD", **extra):
    """One real CT file written with these headers, read back through the reader (header only)."""
    folder = tmp_path / f"s{len(list(tmp_path.glob('s*')))}"
    h = SeriesHeaders(study_description=study, series_description=series, body_part=body_part, extra=extra)
    path = write_series(np.zeros((1, 8, 8), np.float32), folder, (5.0, 0.5, 0.5), h)[0]
    return read_file(path, decode=False)[0]


def reason(models, info):
    [(_, why)] = models.route(info)
    return why


KERNELS = [
    # (Manufacturer, ConvolutionKernel, refused by a soft-tissue-only model)
    ("GE MEDICAL SYSTEMS", "STANDARD", False), ("GE MEDICAL SYSTEMS", "SOFT", False),
    ("GE MEDICAL SYSTEMS", "BONE", True), ("GE MEDICAL SYSTEMS", "BONEPLUS", True),
    ("GE MEDICAL SYSTEMS", "LUNG", True), ("GE MEDICAL SYSTEMS", "EDGE", True),
    ("SIEMENS", "H31s", False), ("SIEMENS", "Hr38", False), ("SIEMENS", ["Hr40f", "3"], False),
    ("SIEMENS", "J40s", False), ("SIEMENS", "Hr64h", True), ("SIEMENS", ["Br64d", "3"], True),
    ("SIEMENS", "I70f", True), ("SIEMENS", "J70h", True), ("SIEMENS", "Bl57", True), ("SIEMENS", "H60s", True),
    ("Philips", "UB", False), ("Philips Medical Systems", "B", False), ("Philips", "YA", True),
    ("Philips", "YC", True), ("Philips", "D", True), ("Philips", "L", True), ("Philips", "E", True),
    ("TOSHIBA", "FC26", False), ("CANON_MEC", "FC21", False), ("TOSHIBA", "FC30", True),
    ("CANON MEDICAL SYSTEMS", "FC35", True), ("TOSHIBA", "FC52", True), ("TOSHIBA", "FC86", True),
]


@pytest.mark.parametrize("maker, kernel, refused", KERNELS)
def test_vendor_kernels(tmp_path, maker, kernel, refused):
    models = models_with(tmp_path, kernels={"refuse_kinds": ["bone", "lung", "sharp"]})
    why = reason(models, header(tmp_path, Manufacturer=maker, ConvolutionKernel=kernel))
    if refused:
        assert isinstance(why, Refusal) and why.rule == "kernels"
        assert why.endswith("; model tiny_ich is made for soft-tissue kernels"), why
    else:
        assert why is None


def test_kernel_sentence_and_a_lung_model_that_takes_lung_kernels(tmp_path):
    ich = models_with(tmp_path, kernels={"refuse_kinds": ["bone", "lung", "sharp"]})
    bone = header(tmp_path, Manufacturer="GE MEDICAL SYSTEMS", ConvolutionKernel="BONE")
    assert reason(ich, bone) == "reconstruction kernel BONE is a bone kernel; model tiny_ich is made for " \
                                "soft-tissue kernels"
    lung = models_with(tmp_path / "l", kernels={"refuse_kinds": ["bone"]})
    assert reason(lung, header(tmp_path, Manufacturer="GE MEDICAL SYSTEMS", ConvolutionKernel="LUNG")) is None
    assert reason(lung, bone) == "reconstruction kernel BONE is a bone kernel; model tiny_ich does not take bone " \
                                 "kernels"


def test_unknown_or_absent_kernel_follows_the_documented_default(tmp_path):
    hitachi = read_file(get_testdata_file("J2K_pixelrep_mismatch.dcm", download=False), decode=False)[0]
    assert hitachi.convolution_kernel == ("11",) and hitachi.body_part == "HEAD"  # a real Hitachi Supria head
    default = models_with(tmp_path, kernels={"refuse_kinds": ["bone", "lung", "sharp"]})
    assert reason(default, hitachi) is None
    assert reason(default, header(tmp_path)) is None  # no ConvolutionKernel at all
    [entry] = default.explain(hitachi)
    kernel = next(r for r in entry["rules"] if r["rule"] == "kernels")
    assert kernel["result"] == "matched" and "not in the kernel table: allowed" in kernel["detail"]
    strict = models_with(tmp_path / "strict", kernels={"refuse_kinds": ["bone"], "unknown": "refuse"})
    assert reason(strict, hitachi) == "reconstruction kernel 11 is not one model tiny_ich knows; it only takes " \
                                      "kernels it knows"
    assert reason(strict, header(tmp_path)).startswith("the header names no reconstruction kernel")


def test_kernel_patterns_win_over_the_vendor_table(tmp_path):
    models = models_with(tmp_path, kernels={"refuse_kinds": ["bone", "lung", "sharp"], "allow": ["H6*"],
                                            "refuse": ["FC2?"],
                                            "manufacturers": {"HITACHI": {"refuse": ["11"]}}})
    assert reason(models, header(tmp_path, Manufacturer="SIEMENS", ConvolutionKernel="H60s")) is None
    assert "on the list of kernels model tiny_ich does not take" in reason(
        models, header(tmp_path, Manufacturer="TOSHIBA", ConvolutionKernel="FC26"))
    assert "does not take on Hitachi Medical scanners" in reason(
        models, header(tmp_path, Manufacturer="Hitachi Medical", ConvolutionKernel="11"))
    assert reason(models, header(tmp_path, Manufacturer="Other", ConvolutionKernel="11")) is None


def test_contrast_rule(tmp_path):
    models = models_with(tmp_path, contrast="refuse")
    ct_small = read_file(get_testdata_file("CT_small.dcm", download=False), decode=False)[0]
    ct_small.body_part = "HEAD"  # pydicom's real GE file with ISOVUE-300: give it the anatomy this model routes by
    why = reason(models, ct_small)
    assert why.rule == "contrast" and why == ("the header names the contrast agent ISOVUE300/100 (route IV); model "
                                              "tiny_ich is made for non-contrast scans")
    for study, series in (("CT HEAD C+", "AXIAL 5mm"), ("CT HEAD", "POST CONTRAST 5mm"), ("CT HEAD", "VENOUS")):
        assert reason(models, header(tmp_path, study=study, series=series)).rule == "contrast"
    for study in ("CT HEAD WO CONTRAST", "CT BRAIN NON CON", "NON-CONTRAST HEAD", "CT HEAD W/O CONTRAST",
                  "CT HEAD W/WO CONTRAST", "HEAD PRE-CONTRAST", "UNENHANCED HEAD"):
        assert reason(models, header(tmp_path, study=study)) is None, study
    assert reason(models, header(tmp_path, ContrastBolusAgent="NONE")) is None
    required = models_with(tmp_path / "r", contrast="require")
    assert reason(required, header(tmp_path)).startswith("nothing in the header shows contrast")
    assert reason(required, header(tmp_path, series="ARTERIAL PHASE")) is None


def test_cardiac_gating_rule_on_a_real_ge_calcium_score(tmp_path):
    models = models_with(tmp_path, cardiac_gating="refuse")
    src = get_testdata_file("dicomdirtests/98892001/CT5N/2392", download=False)
    ds = pydicom.dcmread(src)
    ds.BodyPartExamined = "HEAD"  # route it to the test model; the description is GE's own SmartScore one
    ds.save_as(tmp_path / "smartscore.dcm")
    smartscore = read_file(tmp_path / "smartscore.dcm", decode=False)[0]
    assert smartscore.series_description == "SmartScore - Gated 0.5 sec"
    why = reason(models, smartscore)
    assert why.rule == "cardiac_gating" and "names a cardiac or gated scan (SMARTSCORE)" in why
    assert reason(models, header(tmp_path, CardiacSynchronizationTechnique="PROSPECTIVE")).rule == "cardiac_gating"
    assert reason(models, header(tmp_path, TriggerTime=412.0)).rule == "cardiac_gating"
    assert reason(models, header(tmp_path, CardiacSynchronizationTechnique="NONE")) is None
    assert reason(models, header(tmp_path, series="HEAD NON-GATED")) is None
    assert reason(models, header(tmp_path)) is None
    assert reason(models_with(tmp_path / "a"), smartscore) is None  # cardiac_gating defaults to allow


def test_kvp_rule(tmp_path):
    models = models_with(tmp_path, kvp=[80, 140])
    assert reason(models, header(tmp_path, KVP=70)) == ("the tube voltage 70 kV is outside the 80–140 kV model "
                                                        "tiny_ich was made for")
    assert reason(models, header(tmp_path, KVP=120)) is None
    assert reason(models, header(tmp_path, KVP=140)) is None


@pytest.mark.parametrize("age, refused", [("006Y", True), ("010D", True), ("002W", True), ("006M", True),
                                          ("017Y", True), ("018Y", False), ("045Y", False), ("099Y", False),
                                          ("45", False), ("", False)])
def test_patient_age_rule_never_shows_the_age(tmp_path, age, refused):
    models = models_with(tmp_path, patient_age_years=[18, None])
    info = header(tmp_path, **({"PatientAge": age} if age else {}))
    why = reason(models, info)
    assert (why is not None) == refused
    if refused:
        assert why == "the patient is younger than the 18 years model tiny_ich is made for (children's scans differ)"
    text = repr(models.explain(info)) + str(why)
    if age:
        years = age_years(age)
        assert age not in text  # the age never leaks, neither as written nor in years
        assert years is None or years == 18 or f"{years:g} year" not in text


def test_age_parsing_and_an_upper_bound(tmp_path):
    assert age_years("045Y") == 45 and age_years("006M") == 0.5 and age_years("x") is None
    assert age_years("002W") == pytest.approx(14 / 365.25)
    models = models_with(tmp_path, patient_age_years=[18, 80])
    assert reason(models, header(tmp_path, PatientAge="090Y")).startswith("the patient is older than the 80 years")


@pytest.mark.parametrize("study, series, protocol, body, refused", [
    ("CT HEAD", "DAILY QA", None, "HEAD", "QA"),
    ("CATPHAN 600", "AXIAL", None, "HEAD", "CATPHAN"),
    ("CT HEAD", "AXIAL", "ACR PHANTOM", "HEAD", "ACR"),
    ("QA_HEAD", "AXIAL", None, "HEAD", "QA"),
    ("CT HEAD", "WATER 20CM", None, "HEAD", "WATER"),
    ("HEAD", "AXIAL", None, "PHANTOM", "PHANTOM"),
    ("CT HEAD AQUA", "AXIAL", None, "HEAD", None),      # QA inside a word is not QA
    ("CT HEAD", "QCT SPINE", None, "HEAD", None),       # QC inside QCT is not QC
    ("CT HEAD", "SACRUM", "MACRO", "HEAD", None),       # ACR inside words
])
def test_qa_rule_with_word_boundaries(tmp_path, study, series, protocol, body, refused):
    models = models_with(tmp_path, qa="refuse")
    info = header(tmp_path, study=study, series=series, body_part=body,
                  **({"ProtocolName": protocol} if protocol else {}))
    if body == "PHANTOM":
        info.series_description = "HEAD AXIAL"  # routed by description; the body part says phantom
    why = reason(models, info)
    if refused:
        assert why.rule == "qa" and f"names a QA or phantom scan ({refused})" in why, why
    else:
        assert why is None


def test_custom_qa_keywords_replace_the_default(tmp_path):
    models = models_with(tmp_path, qa="refuse", qa_keywords=["DAILY"])
    assert reason(models, header(tmp_path, series="DAILY 5mm")).rule == "qa"
    assert reason(models, header(tmp_path, series="CATPHAN")) is None


def test_refusal_is_a_plain_string_with_a_rule_and_coverage_is_not_a_refusal(tmp_path):
    models = models_with(tmp_path, **ICH_RULES)
    why = reason(models, header(tmp_path, Manufacturer="GE MEDICAL SYSTEMS", ConvolutionKernel="BONE"))
    assert isinstance(why, str) and why.rule == "kernels" and why.to_dict()["rule"] == "kernels"
    assert why.upper().startswith("RECONSTRUCTION KERNEL") and f"{why}" == str(why)
    back = pickle.loads(pickle.dumps(why))
    assert isinstance(back, Refusal) and back.rule == "kernels" and back == why
    model = models["tiny_ich"]
    good = header(tmp_path)
    good.sop_instance_uids = ["1", "2"]
    good.positions = np.array([0.0, 5.0])
    good.spacing = (5.0, 0.5, 0.5)
    coverage = models.check_series(model, good)
    assert coverage == "2 slices is fewer than the 4 model tiny_ich needs" and not isinstance(coverage, Refusal)
    bone = header(tmp_path, Manufacturer="GE MEDICAL SYSTEMS", ConvolutionKernel="BONE")
    bone.sop_instance_uids, bone.positions, bone.spacing = good.sop_instance_uids, good.positions, good.spacing
    assert isinstance(models.check_series(model, bone), Refusal)


def test_explain_lists_every_rule(tmp_path):
    models = models_with(tmp_path, **ICH_RULES)
    info = header(tmp_path, Manufacturer="GE MEDICAL SYSTEMS", ConvolutionKernel="BONE", PatientAge="034Y",
                  series="DAILY QA")
    [entry] = models.explain(info)
    assert entry["model"] == "tiny_ich" and entry["outcome"] == "refused"
    assert entry["reason"].startswith("reconstruction kernel BONE")
    rules = {r["rule"]: r["result"] for r in entry["rules"]}
    assert rules == {"modality": "matched", "exclude_keywords": "matched", "anatomy": "matched",
                     "kernels": "refused", "slice_thickness": "matched", "gantry_tilt": "not_checked",
                     "contrast": "matched", "cardiac_gating": "not_checked", "kvp": "matched",
                     "patient_age": "matched", "qa": "refused"}
    assert "034" not in repr(entry)
    [chest] = models.explain(header(tmp_path, study="CT CHEST", series="LUNG 1mm", body_part="CHEST"))
    assert chest["outcome"] == "not_for_this_series" and "anatomy" in repr(chest["rules"])


def test_the_issue_series_are_refused_by_the_shipped_manifests(tmp_path):
    """A 1 mm bone-kernel QA phantom for the ICH model; a gated calcium score for the lung model."""
    models = ModelSet.load(verify=False)
    qa_head = header(tmp_path, study="PHANTOM DAILY QA", series="AXIAL 1mm BONE", Manufacturer="GE MEDICAL SYSTEMS",
                     ConvolutionKernel="BONE")
    routes = {m.name: why for m, why in models.route(qa_head)}
    assert routes["ich"].rule == "kernels"
    assert {r["rule"] for r in models.explain(qa_head)[0]["rules"] if r["result"] == "refused"} >= {"kernels", "qa"}
    src = get_testdata_file("dicomdirtests/98892001/CT5N/2392", download=False)
    shutil.copy(src, tmp_path / "cac.dcm")
    ds = pydicom.dcmread(tmp_path / "cac.dcm")
    ds.BodyPartExamined = "CHEST"
    ds.save_as(tmp_path / "cac.dcm")
    cac = read_file(tmp_path / "cac.dcm", decode=False)[0]
    routes = {m.name: why for m, why in models.route(cac)}
    assert routes["lung_nodule"].rule == "cardiac_gating"
    real_head = read_file(get_testdata_file("dicomdirtests/77654033/CT2/17136", download=False), decode=False)[0]
    [(model, why)] = models.route(real_head)  # a real GE routine brain, STANDARD kernel, but 1.25 mm thin
    assert model.name == "ich" and why.rule == "slice_thickness"
    real_head.slice_thickness = 5.0  # the same header as a 5 mm reconstruction: the ICH model applies
    assert [(m.name, why) for m, why in models.route(real_head)] == [("ich", None)]


def test_a_partial_view_without_header_fields_is_not_refused(tmp_path):
    """The daemon re-checks coverage on a view that carries no kernel/contrast fields: absent ≠ 'no kernel'."""
    from types import SimpleNamespace

    models = models_with(tmp_path, kernels={"refuse_kinds": ["bone"], "unknown": "refuse"}, contrast="require")
    view = SimpleNamespace(sop_instance_uids=[str(i) for i in range(6)], positions=np.arange(6) * 5.0, spacing=None,
                           slice_thickness=5.0, gantry_tilt=0.0, tilt_corrected=False)
    assert models.check_series(models["tiny_ich"], view) is None
    assert reason(models, header(tmp_path)).rule == "kernels"  # a real header without a kernel is refused
