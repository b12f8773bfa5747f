"""Checks that `run --check` makes before a daemon starts: config, folders, models."""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.config import Config
from edge_agent.errors import ConfigError


def check_config(cfg: Config) -> list[str]:
    """Validate what can be validated without starting anything; raise ConfigError on the first problem."""
    lines = []
    watch = Path(cfg.ingest.watch)
    if not watch.is_dir():
        raise ConfigError(f"watch folder {watch} does not exist; create it or set ingest.watch / --watch.")
    if not os.access(watch, os.R_OK | os.X_OK):
        raise ConfigError(f"watch folder {watch} is not readable by this user; fix its permissions.")
    lines.append(f"watch folder {watch}: readable")
    state = cfg.state_dir
    probe = state if state.exists() else state.parent
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"state folder {state} is not writable; set agent.state_dir / --state-dir.")
    lines.append(f"state folder {state}: writable")
    from edge_agent.inference.models import ModelSet

    engines = Path(cfg.inference.engines) if cfg.inference.engines else None
    models = ModelSet.load(engines, backend=cfg.inference.backend, threads=cfg.inference.threads or None,
                           overrides=cfg.applies_to_overrides())
    try:
        names = [m.manifest.name + " " + m.manifest.version for m in models.models]
    finally:
        models.close()
    if not names:
        raise ConfigError("no models found; point inference.engines / --engines at a folder of model folders.")
    lines.append(f"models: {', '.join(names)}")
    for name, changes in sorted(cfg.applies_to_overrides().items()):
        lines.append(f"models.{name}.applies_to (site overrides): {', '.join(sorted(changes))}")
    lines.append(f"broker: {cfg.mqtt.broker or 'embedded (127.0.0.1)'}; delivery: {cfg.mqtt.delivery}")
    if cfg.dicom.port:
        tls = "plain TCP"
        if cfg.dicom.tls_cert:
            from edge_agent.service.receiver import tls_context

            tls_context(cfg.dicom.tls_cert, cfg.dicom.tls_key, cfg.dicom.tls_ca or None)  # raises one sentence
            tls = "TLS" + (" with peer certificates" if cfg.dicom.tls_ca else "")
        lines.append(f"DICOM receiver: {cfg.dicom.ae_title} on {cfg.dicom.bind} port {cfg.dicom.port}, {tls}")
    return lines
