"""Shared by the PACS transport tests: a positive ICH result of a rendered head series, queued through the real
PacsDelivery (so the SR and KOS bytes are the agent's), and what the queue holds."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pydicom

from edge_agent.results.content import Algorithm
from edge_agent.results.delivery import PacsDelivery
from edge_agent.results.destination import parse_destination
from edge_agent.results.queue import read_deliveries
from edge_agent.results.sender import SenderSettings
from edge_agent.results.study import read_study_header
from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE
from edge_agent.service.simulator import render

ALGORITHMS = {"ich": Algorithm("ich", "2.0.0", "cd" * 32, "onnxrt", "fp32", True)}


def head_series(folder: Path, seed: int = 61, slices: int = 12) -> list[Path]:
    _, paths = render("ich", seed, folder, slices=slices, **ROUTINE)
    return paths


def positive_result(paths: list[Path]) -> dict:
    """A final, positive ICH result of the series in ``paths`` (two key slices): an SR and a KOS to send."""
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    keys = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths[4:6]]
    return {"series_instance_uid": first.SeriesInstanceUID, "study_instance_uid": first.StudyInstanceUID,
            "status": "analysed", "models": [{"name": "ich", "version": "2.0.0", "status": "analysed"}],
            "findings": [{"code": "ich", "label": "Intracranial haemorrhage", "probability": 0.91, "positive": True,
                          "threshold": 0.5, "model": "ich", "model_version": "2.0.0",
                          "key_slices": [{"sop_instance_uid": k, "probability": 0.9} for k in keys]}]}


def delivery(tmp_path: Path, destination: str, **settings) -> PacsDelivery:
    """A PacsDelivery to one destination with quick retries (not started)."""
    defaults = dict(calling_ae_title="EDGE_TEST", retry_min=0.2, retry_max=0.5, timeout=5.0)
    return PacsDelivery(tmp_path / "pacs.sqlite3", [parse_destination(destination)],
                        SenderSettings(**{**defaults, **settings}), site="s", device="d")


def submit(pacs: PacsDelivery, paths: list[Path]) -> list[str]:
    """Queue the SR and KOS of a positive result of ``paths``; returns their SOP Instance UIDs."""
    new = pacs.submit(positive_result(paths), read_study_header(paths[0]), ALGORITHMS, "HEAD")
    assert len(new) == 2
    return new


def rows(tmp_path: Path) -> list[dict]:
    return read_deliveries(tmp_path / "pacs.sqlite3")


def all_done(tmp_path: Path):
    found = rows(tmp_path)
    return found if found and all(r["state"] == "done" for r in found) else None


def retried(tmp_path: Path, attempts: int = 1):
    """Every delivery failed at least ``attempts`` times and waits for its next try (nothing done, nothing dead)."""
    found = rows(tmp_path)
    ok = found and all(r["state"] in ("pending", "sending") and r["attempts"] >= attempts and r["last_error"]
                       for r in found)
    return found if ok else None


def state_deliveries(state_dir: Path) -> list[dict]:
    """Every delivery of an agent's ``<state>/pacs.sqlite3`` with its object (read-only; [] before it exists)."""
    path = state_dir / "pacs.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(
            "SELECT d.destination, d.sop_instance_uid, d.state, d.attempts, d.last_error, o.kind, o.revision,"
            " o.dataset FROM deliveries d JOIN objects o USING (sop_instance_uid)")]
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()


def scan(agent, paths) -> None:
    """Write ``paths`` into the agent's watch folder as a scanner exporting with dot-temp + rename does."""
    target = agent.watch / "scan"
    target.mkdir(exist_ok=True)
    for p in paths:
        tmp = target / f".{p.name}.part"
        shutil.copyfile(p, tmp)
        tmp.rename(target / p.name)
