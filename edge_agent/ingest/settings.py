"""Settings of the folder ingest and what it hands to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import check_at_least, check_positive
from edge_agent.dicom import Slice

if TYPE_CHECKING:
    from edge_agent.config import Config


@dataclass
class IngestSettings:
    """How the watch folder is ingested (all durations in seconds)."""

    watch_dir: Path
    state_dir: Path  # ledger at state_dir/"ledger.sqlite3"
    quarantine_dir: Path | None = None  # default state_dir/"quarantine"
    poll: bool = False  # polling observer (network shares) instead of inotify
    poll_interval: float = 1.0
    stable_seconds: float = 0.5  # size+mtime unchanged this long before reading
    retry_timeout: float = 30.0  # keep retrying an undecodable file this long, then quarantine
    rescan_interval: float = 60.0  # periodic reconciliation rescan
    delete_after_processing: bool = False  # delete inputs once their series is done / quarantined
    workers: int | None = None  # files decoded at once (None = all cores)
    # Decode compressed files in worker processes (decoders hold the GIL, and one that aborts or runs out of
    # memory then costs one file, not the agent); False: in the decode threads.
    decode_processes: bool = True
    keep_stored: bool = False  # hand over stored values + rescale instead of HU (Slice.stored; half the bytes)

    def __post_init__(self) -> None:
        self.watch_dir = Path(self.watch_dir)
        self.state_dir = Path(self.state_dir)
        if self.quarantine_dir is not None:
            self.quarantine_dir = Path(self.quarantine_dir)
        # Settings built in code are checked with the config's rules (edge_agent.config: one function, one
        # sentence each); from_config's values already passed them in config.validate.
        for name in ("poll_interval", "stable_seconds", "retry_timeout", "rescan_interval"):
            check_positive(name, getattr(self, name))
        if self.workers is not None:
            check_at_least("workers", self.workers, 1, " (or None: one per core)")

    @classmethod
    def from_config(cls, cfg: Config, **overrides: Any) -> "IngestSettings":
        """The one translation of the config's ``[ingest]`` section (the state folder from ``[agent]``);
        ``overrides`` set what the config does not hold (``keep_stored``, ``decode_processes``)."""
        i = cfg.ingest
        values: dict[str, Any] = dict(
            watch_dir=Path(i.watch), state_dir=cfg.state_dir,
            quarantine_dir=Path(i.quarantine_dir) if i.quarantine_dir else None, poll=i.poll,
            poll_interval=i.poll_interval, stable_seconds=i.stable_seconds, retry_timeout=i.retry_timeout,
            rescan_interval=i.rescan_interval, delete_after_processing=i.delete_after_processing,
            workers=i.workers or None)
        values.update(overrides)
        return cls(**values)

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.sqlite3"

    @property
    def quarantine(self) -> Path:
        return self.quarantine_dir if self.quarantine_dir is not None else self.state_dir / "quarantine"


@dataclass
class IngestedFile:
    """A complete, decoded file whose instances the pipeline has not seen (or must see again on resume)."""

    path: Path
    slices: list[Slice]
    sop_instance_uids: list[str]  # the slices' keys: the SOP Instance UID, or "<uid>.<frame>" per frame
    series_instance_uid: str
    received_at: float  # time.time() when the file was first noticed
    complete_at: float  # time.time() when it was judged complete (stable and decoded)
    study_instance_uid: str = ""
    resumed: bool = False  # re-emitted after a restart: its series was never marked done
    # time.time() of the last change seen before the file counted as complete (its last write, close,
    # rename or move-in event): when the scanner finished the file. Latency is measured from here.
    written_at: float = 0.0
