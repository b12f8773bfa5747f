"""Series decision rules: per-slice probabilities → series finding."""

import numpy as np
import pytest

from edge_agent.decision import DecisionError, DecisionRule, PreliminaryRule, decide, preliminary_met
from edge_agent.decision.rules import series_probability


def test_top_k_mean_is_mean_of_k_highest():
    p = np.array([0.1, 0.9, 0.2, 0.7, 0.3])
    rule = DecisionRule(rule="top_k_mean", k=2, threshold=0.5)
    d = decide(p, rule)
    assert d.probability == pytest.approx(0.8)
    assert d.positive is True


def test_top_k_mean_single_hot_slice_is_diluted_but_max_is_not():
    p = np.array([0.05, 0.05, 0.95, 0.05])
    assert decide(p, DecisionRule(rule="top_k_mean", k=3, threshold=0.5)).positive is False
    assert decide(p, DecisionRule(rule="max", threshold=0.5)).probability == pytest.approx(0.95)
    assert decide(p, DecisionRule(rule="max", threshold=0.5)).positive is True


def test_k_larger_than_series_is_clipped():
    p = np.array([0.6, 0.8])
    assert series_probability(p, DecisionRule(k=10)) == pytest.approx(0.7)


def test_threshold_is_inclusive():
    assert decide(np.array([0.5]), DecisionRule(rule="max", threshold=0.5)).positive is True
    assert decide(np.array([0.4999]), DecisionRule(rule="max", threshold=0.5)).positive is False


def test_key_slices_are_highest_first_with_uids_and_positions():
    p = np.array([0.1, 0.9, 0.2, 0.7, 0.9])
    uids = [f"1.2.3.{i}" for i in range(5)]
    positions = [0.0, 5.0, 10.0, 15.0, 20.0]
    d = decide(p, DecisionRule(rule="max", threshold=0.5, key_slices=3), positions_mm=positions,
               sop_instance_uids=uids)
    assert [k["index"] for k in d.key_slices] == [1, 4, 3]  # ties keep series order
    assert d.key_slices[0] == {"index": 1, "sop_instance_uid": "1.2.3.1", "position_mm": 5.0, "probability": 0.9,
                               "positive": True}
    assert d.to_dict()["key_slices"][2]["sop_instance_uid"] == "1.2.3.3"


def test_slice_threshold_calls_slices_without_moving_the_series_decision():
    p = np.array([0.1, 0.45, 0.2, 0.7, 0.3])
    at_series = decide(p, DecisionRule(rule="max", threshold=0.8, key_slices=3))
    lower = decide(p, DecisionRule(rule="max", threshold=0.8, key_slices=3, slice_threshold=0.4))
    assert at_series.positive is lower.positive is False  # the series still needs 0.8
    assert [k["positive"] for k in at_series.key_slices] == [False, False, False]
    assert [(k["index"], k["positive"]) for k in lower.key_slices] == [(3, True), (1, True), (4, False)]
    assert DecisionRule(threshold=0.8).slice_cut == 0.8  # default: the series threshold
    assert DecisionRule(threshold=0.8, slice_threshold=0.4).to_dict()["slice_threshold"] == 0.4
    assert "slice_threshold" not in DecisionRule(threshold=0.8).to_dict()


@pytest.mark.parametrize("cut", [-0.1, 1.5, 0.9])
def test_slice_threshold_outside_zero_one_or_above_the_series_threshold_is_refused(cut):
    with pytest.raises(DecisionError, match="slice_threshold"):
        DecisionRule(threshold=0.8, slice_threshold=cut)


def test_column_vector_accepted_and_empty_series_negative():
    assert decide(np.array([[0.2], [0.9]]), DecisionRule(rule="max")).probability == pytest.approx(0.9)
    empty = decide(np.zeros(0), DecisionRule())
    assert (empty.probability, empty.positive, empty.key_slices) == (0.0, False, [])


@pytest.mark.parametrize("bad, words", [
    (np.array([0.2, np.nan]), "non-finite"),
    (np.array([0.2, 3.0]), r"outside \[0, 1\]"),
    (np.ones((2, 2)) * 0.5, "one value per slice"),
])
def test_bad_probabilities_are_refused_with_a_sentence(bad, words):
    with pytest.raises(DecisionError, match=words):
        decide(bad, DecisionRule())


def test_mismatched_uids_refused():
    with pytest.raises(DecisionError, match="sop_instance_uids has 1 entries"):
        decide(np.array([0.1, 0.2]), DecisionRule(), sop_instance_uids=["1"])


def test_preliminary_needs_min_slices_over_its_threshold():
    rule = DecisionRule(threshold=0.5, preliminary=PreliminaryRule(min_slices=2, threshold=0.8))
    assert preliminary_met(np.array([0.1, 0.95]), rule) is False
    assert preliminary_met(np.array([0.1, 0.95, 0.8]), rule) is True
    assert preliminary_met(np.array([0.95, 0.95]), DecisionRule()) is False  # no preliminary block


@pytest.mark.parametrize("kwargs, words", [
    ({"rule": "median"}, "decision.rule must be one of"),
    ({"threshold": 1.5}, "decision.threshold"),
    ({"k": 0}, "decision.k"),
    ({"key_slices": -1}, "decision.key_slices"),
])
def test_invalid_rules_refused(kwargs, words):
    with pytest.raises(DecisionError, match=words):
        DecisionRule(**kwargs)
    with pytest.raises(DecisionError, match="preliminary.min_slices"):
        PreliminaryRule(min_slices=0)
