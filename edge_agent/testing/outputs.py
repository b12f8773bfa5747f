"""Stand-ins around the pipeline: what ingest hands it (`ingested_file`), what it hands the outbox, ledger, metrics."""

from __future__ import annotations


class RecordingOutputs:
    """Records what the pipeline hands to the outbox, the ledger and the metrics."""

    def __init__(self):
        self.alerts, self.results, self.done, self.counts = [], [], [], []

    def raise_alert(self, payload):
        self.alerts.append(payload)

    def publish_result(self, payload):
        self.results.append(payload)

    def series_done(self, uid):
        self.done.append(uid)

    def observe(self, stage, seconds):
        pass

    def count(self, name, state=None):
        self.counts.append((name, state))


class PreviewOutputs(RecordingOutputs):
    """:class:`RecordingOutputs` that also records the key-image previews the pipeline publishes."""

    def __init__(self):
        super().__init__()
        self.previews: list[dict] = []

    def publish_preview(self, payload):
        self.previews.append(payload)


def ingested_file(path, stored_only: bool = False):
    """What ingest hands the pipeline for one complete file (``stored_only``: stored values + rescale, as the agent)."""
    import time

    from edge_agent.dicom import read_file
    from edge_agent.ingest import IngestedFile

    slices = read_file(path, stored_only=stored_only)
    now = time.time()
    return IngestedFile(path=path, slices=slices, sop_instance_uids=[s.sop_instance_uid for s in slices],
                        series_instance_uid=slices[0].series_instance_uid, received_at=now, complete_at=now)
