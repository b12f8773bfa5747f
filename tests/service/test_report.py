"""edge-agent report: the period parser, the summary against hand counts, the CLI on a real state DB."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from edge_agent.cli.report import report
from edge_agent.service.report import ReportError, parse_period, summarise
from edge_agent.service.state import Outcome, SeriesStore


@pytest.mark.parametrize("text, seconds", [("7d", 604800), ("24h", 86400), ("30m", 1800), ("2w", 1209600),
                                           ("90s", 90), ("1.5h", 5400)])
def test_periods(text, seconds):
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "-1d", "0h", "7y"])
def test_bad_periods_are_one_sentence(text):
    with pytest.raises(ReportError, match="is not a period"):
        parse_period(text)


def outcome(uid, model="ich", finding="ich", status="analysed", positive=False, mode="live", scanner="GE X",
            reason=None, latency=2.0, t=None):
    return Outcome(uid, model, finding, t or time.time(), status, reason, mode,
                   None if finding == "" else 0.5, None if finding == "" else positive, scanner, latency)


def test_summary_counts_each_series_once_per_model_and_splits_scanners_and_modes():
    rows = summarise([
        outcome("1", positive=True), outcome("2"), outcome("3", finding="", status="skipped", reason="bone kernel"),
        outcome("4", scanner="SIEMENS Y", positive=True, latency=4.0),
        outcome("5", mode="shadow", positive=True), outcome("6", mode="shadow"),
    ])
    by = {(r["scanner"], r["mode"]): r for r in rows}
    ge = by[("GE X", "live")]
    assert (ge["series"], ge["analysed"], ge["skipped"], ge["alerted"]) == (3, 2, 1, 1)
    assert ge["reasons"] == {"bone kernel": 1} and ge["latency_s_p50"] == 2.0
    assert by[("SIEMENS Y", "live")]["alerted"] == 1
    shadow = by[("GE X", "shadow")]
    assert shadow["would_alert"] == 1 and shadow["series"] == 2 and "alerted" not in shadow


def test_cli_reads_the_state_db_and_respects_since(tmp_path):
    store = SeriesStore(tmp_path / "series.sqlite3")
    store.save_outcomes([outcome("new", positive=True), outcome("new2", mode="shadow", positive=True)])
    store.save_outcomes([outcome("old", positive=True, t=time.time() - 10 * 86400)])
    store.close()
    result = CliRunner().invoke(report, ["--state-dir", str(tmp_path), "--since", "7d", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["models"]
    assert sum(r["series"] for r in rows) == 2  # the 10-day-old series is outside the period
    text = CliRunner().invoke(report, ["--state-dir", str(tmp_path), "--since", "30d"])
    assert text.exit_code == 0 and "1 (would)" in text.output and "shadow" in text.output


def test_cli_without_state_is_one_sentence(tmp_path):
    from edge_agent.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--state-dir", str(tmp_path / "none")])
    assert exit_info.value.code != 0
