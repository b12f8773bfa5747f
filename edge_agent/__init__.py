"""edge-agent: scanner-side DICOM ingest, AI inference and durable MQTT alerts."""

__version__ = "0.1.0"
