"""A stand-in for the agent's outputs (outbox, ledger, metrics) that records what the pipeline hands to them."""

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
