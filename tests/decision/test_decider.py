"""The series decider without threads: what it asks the pipeline and infer to do, checked by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edge_agent.decision import DecisionRule, PreliminaryRule
from edge_agent.decision.series import (
    ModelOutcome, ScoredSlice, decide_model, final_actions, preliminary_actions, series_result, series_status,
)


def manifest(rule="top_k_mean", k=2, threshold=0.9, key_slices=3, preliminary=PreliminaryRule(1, 0.6),
             slice_threshold=None):
    return SimpleNamespace(name="m", version="1", synthetic_training=True,
                           findings=[SimpleNamespace(code="ich", label="ICH", severity="critical")],
                           decision=DecisionRule(rule=rule, k=k, threshold=threshold, key_slices=key_slices,
                                                 preliminary=preliminary, slice_threshold=slice_threshold))


def slices(probs, t0=100.0):
    return [ScoredSlice(f"1.2.{i}", 5.0 * i, (p,), t0 + i) for i, p in enumerate(probs)]


def aid(m, code):
    return f"{m.name}/{code}"


def prior(state, probability=0.95, revision=1):
    return lambda _aid: SimpleNamespace(state=state, probability=probability, revision=revision)


def no_prior(_aid):
    return None


def test_preliminary_when_the_rule_holds_with_the_best_new_slice_as_decisive():
    m = manifest()
    seen = slices([0.1, 0.7, 0.95, 0.2])
    [action] = preliminary_actions(m, seen, seen[1:3], aid, no_prior)
    assert action.state == "preliminary" and action.alert_id == "m/ich"
    assert action.decisive_at == seen[2].complete_at
    assert action.probability == pytest.approx((0.95 + 0.7) / 2)  # top-2 mean, computed by hand
    assert [k["sop_instance_uid"] for k in action.key_slices] == ["1.2.2", "1.2.1", "1.2.3"]


def test_no_preliminary_below_the_rule_or_while_an_alert_is_live_but_again_after_a_retraction():
    m = manifest()
    low = slices([0.1, 0.5])
    assert preliminary_actions(m, low, low, aid, no_prior) == []
    high = slices([0.9, 0.1])
    assert preliminary_actions(m, high, high, aid, prior("preliminary")) == []
    assert preliminary_actions(m, high, high, aid, prior("final")) == []
    assert len(preliminary_actions(m, high, high, aid, prior("retracted"))) == 1
    assert preliminary_actions(manifest(preliminary=None), high, high, aid, no_prior) == []


def test_final_raises_a_positive_once_and_retracts_a_live_alert_when_negative():
    m = manifest()
    positive = slices([0.2, 0.97, 0.99, 0.1])
    outcome = decide_model(m, positive)
    [final] = final_actions(outcome, positive, aid, no_prior)
    assert final.state == "final" and final.probability == pytest.approx(0.98)
    assert final.decisive_at == max(positive[1].complete_at, positive[2].complete_at)
    assert final_actions(outcome, positive, aid, prior("final", probability=0.98)) == []  # unchanged
    assert len(final_actions(outcome, positive, aid, prior("final", probability=0.90))) == 1  # changed: update
    negative = slices([0.2, 0.3])
    outcome = decide_model(m, negative)
    assert final_actions(outcome, negative, aid, no_prior) == []
    [retraction] = final_actions(outcome, negative, aid, prior("preliminary"))
    assert retraction.state == "retracted"
    assert final_actions(outcome, negative, aid, prior("retracted")) == []


def test_findings_count_and_mark_the_slices_called_at_the_slice_threshold():
    s = slices([0.2, 0.55, 0.97, 0.35, 0.6])
    [default] = decide_model(manifest(), s).findings
    assert (default["slice_threshold"], default["slices_positive"]) == (0.9, 1)  # the series threshold
    [finding] = decide_model(manifest(slice_threshold=0.5), s).findings
    assert finding["threshold"] == 0.9 and finding["slice_threshold"] == 0.5
    assert finding["slices_positive"] == 3  # 0.55, 0.97, 0.6 by hand
    assert finding["positive"] is False  # top-2 mean 0.785 < 0.9: the series decision did not move
    assert [(k["sop_instance_uid"], k["positive"]) for k in finding["key_slices"]] == [
        ("1.2.2", True), ("1.2.4", True), ("1.2.1", True)]
    [low] = decide_model(manifest(slice_threshold=0.58), s).findings
    assert [k["positive"] for k in low["key_slices"]] == [True, True, False]


def test_the_manifest_rule_decides_not_a_fixed_top_k():
    """The old pipeline used a top-k mean and three key slices whatever the manifest said."""
    m = manifest(rule="max", threshold=0.9, key_slices=1)
    s = slices([0.2, 0.95, 0.3, 0.1])
    outcome = decide_model(m, s)
    [finding] = outcome.findings
    assert finding["probability"] == pytest.approx(0.95) and finding["positive"] is True
    assert [k["index"] for k in finding["key_slices"]] == [1]
    [action] = preliminary_actions(m, s, s, aid, no_prior)
    assert action.probability == pytest.approx(0.95) and len(action.key_slices) == 1


def test_slice_probabilities_on_request_in_series_order():
    s = slices([0.2, 0.95, 0.3])
    assert "slice_probabilities" not in decide_model(manifest(), s).findings[0]
    assert decide_model(manifest(), s, slice_probabilities=True).findings[0]["slice_probabilities"] == [0.2, 0.95, 0.3]


@pytest.mark.parametrize("statuses, expected", [
    ([], "skipped"),
    (["analysed", "rejected"], "analysed"),
    (["rejected", "failed"], "rejected"),
    (["skipped", "rejected"], "rejected"),
    (["skipped", "not_assessable", "rejected"], "not_assessable"),
    (["skipped"], "skipped"),
])
def test_series_status_takes_the_most_telling_model_status(statuses, expected):
    outcomes = [ModelOutcome(manifest(), st, None if st == "analysed" else f"reason {i}")
                for i, st in enumerate(statuses)]
    status, reason = series_status(outcomes, "no model applies")
    assert status == expected
    if expected == "analysed":
        assert reason is None
    elif not statuses:
        assert reason == "no model applies"
    else:
        members = {"rejected": ("rejected", "failed")}.get(expected, (expected,))
        assert reason == "; ".join(f"reason {i}" for i, st in enumerate(statuses) if st in members)


def test_series_result_is_the_infer_object():
    s = slices([0.1, 0.99, 0.98])
    result = series_result(series_instance_uid="1.2", study_instance_uid="1.3", slices=3,
                           outcomes=[decide_model(manifest(), s, backend="onnxrt")],
                           no_model_reason="none", warnings=["w"])
    assert result["status"] == "analysed" and "reason" not in result and result["warnings"] == ["w"]
    assert result["models"] == [{"name": "m", "version": "1", "backend": "onnxrt", "status": "analysed"}]
    assert result["findings"][0]["positive"] is True
    assert np.isclose(result["findings"][0]["probability"], 0.985)


def test_evidence_lead_is_the_evidence_slice_the_model_scores_highest():
    from edge_agent.decision.series import evidence_lead

    p = [0.1, 0.2, 0.3, 0.95, 0.4, 0.6, 0.1, 0.6]
    ev = SimpleNamespace(present=True, slices=[5, 3, 7])   # largest blood area first
    assert evidence_lead(ev, p) == 3                      # not the largest area (5): the model's best of them
    assert evidence_lead(SimpleNamespace(present=True, slices=[7, 5]), p) == 7   # a tie: the larger area
    assert evidence_lead(SimpleNamespace(present=False, slices=[3]), p) is None
    assert evidence_lead(None, p) is None and evidence_lead(SimpleNamespace(present=True, slices=[]), p) is None
