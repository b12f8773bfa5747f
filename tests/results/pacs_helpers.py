"""Shared by the PACS transport tests: a positive ICH result of a rendered head series, queued through the real
PacsDelivery (so the SR and KOS bytes are the agent's), and what the queue holds; the TLS peers' server context
and pynetdicom's Storage SCP as a peer, the checks of one destination, what Orthanc stored."""

from __future__ import annotations

import io
import shutil
import sqlite3
import ssl
from pathlib import Path
from typing import Callable, Iterator

import pydicom
from pynetdicom import AE, evt

from edge_agent.config import Config
from edge_agent.results.content import Algorithm
from edge_agent.results.delivery import PacsDelivery
from edge_agent.results.destination import parse_destination
from edge_agent.results.queue import read_deliveries
from edge_agent.results.sender import SenderSettings
from edge_agent.results.study import read_study_header
from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE
from edge_agent.service.simulator import render
from edge_agent.testing.net import free_port
from edge_agent.testing.wait import wait_value

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
VERIFICATION = "1.2.840.10008.1.1"

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


def delivered(pacs: PacsDelivery, paths: list[Path], folder: Path, what: str) -> tuple[list[str], list[dict]]:
    """Start ``pacs``, queue a positive result of ``paths`` and wait until all is done (:func:`all_done` in
    ``folder``); stopped again. Returns the SOP Instance UIDs queued and the queue's rows."""
    pacs.start()
    try:
        new = submit(pacs, paths)
        return new, wait_value(lambda: all_done(folder), 30, what)
    finally:
        pacs.stop()


def failed_tries(pacs: PacsDelivery, paths: list[Path], folder: Path, attempts: int, what: str) -> list[dict]:
    """Start ``pacs``, queue a positive result of ``paths`` and wait until every delivery failed ``attempts``
    times (:func:`retried` in ``folder``); the delivery is stopped again. Returns the queue's rows."""
    pacs.start()
    try:
        submit(pacs, paths)
        return wait_value(lambda: retried(folder, attempts), 30, what)
    finally:
        pacs.stop()


def destination_checks(destination: str, **pacs):
    """``run --check``'s checks of one destination, with these ``[pacs]`` settings."""
    from edge_agent.service.preflight import pacs_checks  # noqa: PLC0415

    cfg = Config()
    cfg.pacs.destinations = [destination]
    for key, value in pacs.items():
        setattr(cfg.pacs, key, value)
    return pacs_checks(cfg, timeout=3.0)


def one_sentence(line: str) -> None:
    """A check line whose text after ``what: `` is one sentence: no traceback, no second sentence, one line."""
    assert "Traceback" not in line and ". " not in line.split(": ", 1)[1] and "\n" not in line, line


# --------------------------------------------------------------------------- TLS peers

def server_context(pki, require_client: bool = False) -> ssl.SSLContext:
    """A test peer's TLS server context, built with the ssl module (not the agent's code): the PKI's server
    certificate; with ``require_client`` every peer must present a certificate the PKI's CA signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    if require_client:
        ctx.load_verify_locations(str(pki.ca_cert))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class TlsScp:
    """pynetdicom's Storage SCP (SR, KO, Verification) on ``host``, over TLS when ``context`` is given."""

    def __init__(self, context: ssl.SSLContext | None, host: str = "127.0.0.1") -> None:
        self.stored: list[str] = []
        self.ae = AE(ae_title="TLSSCP")
        # Short time-outs: a TLS hello read as a (huge) PDU must not keep an association thread waiting.
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 2
        for uid in (COMPREHENSIVE_3D_SR, KEY_OBJECT_SELECTION, VERIFICATION):
            self.ae.add_supported_context(uid)
        self.host, self.port = host, free_port()
        self.server = self.ae.start_server((host, self.port), block=False, ssl_context=context,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store),
                                                         (evt.EVT_C_ECHO, lambda e: 0x0000)])

    def _store(self, event):
        self.stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    @property
    def destination(self) -> str:
        return f"tls:TLSSCP@{self.host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()


def closing_factory(make: Callable, close: str = "close") -> Iterator[Callable]:
    """The body of a factory fixture (``yield from closing_factory(TlsScp)``): yields ``make`` wrapped so that
    every object it made is closed (its method ``close``) at teardown."""
    made: list = []

    def factory(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    yield factory
    for thing in made:
        getattr(thing, close)()


# --------------------------------------------------------------------------- what Orthanc stored

def content_items(item: dict, value_type: str) -> list[dict]:
    """Every content item of ``value_type`` below ``item`` (Orthanc's simplified JSON of an SR tree)."""
    found = []
    for child in item.get("ContentSequence", []) or []:
        if child.get("ValueType") == value_type:
            found.append(child)
        found += content_items(child, value_type)
    return found


def same_content(orthanc, instance_id: str, queued: bytes) -> bool:
    """What Orthanc stored is the dataset we queued (file meta aside: the receiver writes its own)."""
    stored = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{instance_id}/file")))
    ours = pydicom.dcmread(io.BytesIO(queued))
    return stored.to_json_dict() == ours.to_json_dict()
