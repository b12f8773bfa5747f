"""Folder ingest: watch a folder, judge each file complete, deduplicate, hand over.

``Ingest`` (core.py) ties together the watcher (watcher.py: watchdog, inotify
or polling), the stable-file check (stable.py), decoding on every core
(decode.py), the verdict on each decoded file (verdict.py), the SQLite ledger
of files and SOP Instance UIDs (ledger.py) and the quarantine
(quarantine.py); the DICOM C-STORE receiver (receiver.py) is the other way in, writing
into the watch folder. This package is the only place watchdog is imported.

Typical use (the daemon)::

    ingest = Ingest(IngestSettings(watch_dir, state_dir), on_file=pipeline.submit,
                    on_rejected=lambda path, reason: log.warning("%s: %s", path, reason))
    ingest.start()                      # raises EdgeAgentError with one sentence
    ...
    ingest.mark_series_done(series_instance_uid)   # after the final decision
    ingest.stop()
"""

from edge_agent.ingest.core import Ingest
from edge_agent.ingest.quarantine import SIDECAR_SUFFIX
from edge_agent.ingest.settings import IngestedFile, IngestSettings
from edge_agent.ingest.verdict import content_hash
from edge_agent.ingest.watcher import WatchFolderError, is_ignored_name

__all__ = [
    "Ingest",
    "IngestSettings",
    "IngestedFile",
    "WatchFolderError",
    "SIDECAR_SUFFIX",
    "content_hash",
    "is_ignored_name",
]
