"""Typed settings for the agent: file (TOML or YAML) < environment < command line.

Config is data: every field is declared here with its type, default and a
one-line description (the README's configuration reference is generated from
these), unknown keys are rejected, and secrets come from the environment or
from files, never from the command line. No I/O beyond reading the file.

Environment variables: ``EDGE_AGENT_<SECTION>_<FIELD>`` (upper case), e.g.
``EDGE_AGENT_MQTT_BROKER=mqtts://broker:8883``. The MQTT password is read from
``EDGE_AGENT_MQTT_PASSWORD`` or the file named by ``mqtt.password_file``; the
STOW-RS credentials (``pacs.stow_token``, ``pacs.stow_password``) are best given
as ``EDGE_AGENT_PACS_STOW_TOKEN`` / ``EDGE_AGENT_PACS_STOW_PASSWORD``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from edge_agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib


#: The choices of settings that code also builds without a config (alerts/settings.py, alerts/previews.py).
MQTT_PROTOCOLS = ("5", "3.1.1", "auto")
MQTT_DELIVERY = ("receipt", "broker")
PREVIEW_FORMATS = ("auto", "png", "jpeg")


def _f(default: Any, doc: str, **kw) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass
class AgentSection:
    site: str = _f("site", "Site name: the second level of every MQTT topic.")
    device: str = _f("ct1", "Device name (usually the scanner): the third level of every MQTT topic.")
    state_dir: str = _f("/var/lib/edge-agent", "Folder for the ledger, series state, outbox and quarantine.")
    log_json: bool = _f(False, "Log JSON lines instead of plain text.")
    summary_interval: float = _f(900.0, "Seconds between one-line activity summaries in the log (series, files, "
                                 "alerts, quarantined in the last interval); 0: none.")


@dataclass
class IngestSection:
    watch: str = _f("/srv/edge-agent/incoming", "Folder the scanner exports to (watched recursively).")
    poll: bool = _f(False, "Poll the folder instead of inotify (needed on NFS/SMB shares).")
    poll_interval: float = _f(1.0, "Seconds between polls when polling.")
    stable_seconds: float = _f(0.5, "A file its writer neither closed nor renamed into the folder (polled shares, "
                               "open writers) counts once its size and mtime were unchanged this long.")
    retry_timeout: float = _f(30.0, "Keep retrying a file that does not decode this long, then quarantine it (one "
                              "that more bytes cannot make DICOM, with no 'DICM' after the 128-byte preamble, is "
                              "quarantined at once).")
    rescan_interval: float = _f(60.0, "Seconds between reconciliation rescans of the whole folder.")
    delete_after_processing: bool = _f(False, "Delete input files once their series is final (retention).")
    quarantine_dir: str = _f("", "Quarantine folder (default: <state_dir>/quarantine).")
    workers: int = _f(0, "Decode workers (0: one per core).")


@dataclass
class SeriesSection:
    settle: float = _f(5.0, "Quiet period (s) after the scanner wrote a series' last slice before its result is "
                            "final; files written before then that are still being read are waited for (at most "
                            "60 s more).")
    max_open: float = _f(1800.0, "A series still receiving slices after this many seconds is finalised anyway.")
    queue_size: int = _f(256, "Bounded queue of decoded files waiting for inference (backpressure).")
    batch: int = _f(16, "Most slices scored in one inference call.")


@dataclass
class InferenceSection:
    engines: str = _f("", "Folder of model folders (each with manifest.json); empty: the shipped models.")
    backend: str = _f("auto", "auto | onnxrt | tensorrt.", choices=("auto", "onnxrt", "tensorrt"))
    threads: int = _f(0, "Inference threads for ONNX Runtime (0: its default).")
    gpu_preprocess: str = _f("auto", "auto: models on TensorRT turn stored pixels into their input on the GPU "
                             "(falls back to the CPU if the kernel cannot be built); off: always on the CPU.",
                             choices=("auto", "off"))
    zero_copy: str = _f("auto", "TensorRT I/O and stored pixels in mapped pinned memory the GPU reads in place: "
                        "auto (on for integrated GPUs such as the Jetson's shared DRAM) | on | off.",
                        choices=("auto", "on", "off"))
    mode: str = _f("live", "live: positive findings raise alerts; shadow (silent trial): every result is "
                   "published with shadow: true and would_alert, and no alert is raised. A model's own "
                   "[models.<name>] mode overrides it.", choices=("live", "shadow"))


@dataclass
class MqttSection:
    broker: str = _f("", "mqtt://host:port or mqtts://host:port; empty: an embedded broker on 127.0.0.1.")
    embedded_port: int = _f(1883, "Port of the embedded broker when no broker is set (0: any free port).")
    protocol: str = _f("auto", "5 | 3.1.1 | auto (5, falling back to 3.1.1).", choices=MQTT_PROTOCOLS)
    prefix: str = _f("edge-agent", "First level of every topic.")
    client_id: str = _f("", "MQTT client id (default: edge-agent-<site>-<device>).")
    username: str = _f("", "Username (or EDGE_AGENT_MQTT_USERNAME).", hashed=False)
    password_file: str = _f("", "File holding the password (or EDGE_AGENT_MQTT_PASSWORD).", hashed=False)
    ca_file: str = _f("", "CA bundle for mqtts:// (default: the system store).", hashed=False)
    cert_file: str = _f("", "Client certificate for mutual TLS.", hashed=False)
    key_file: str = _f("", "Client key for mutual TLS.", hashed=False)
    tls_insecure: bool = _f(False, "Skip the host-name check of the broker certificate (the chain is still verified; logged as a warning).")
    delivery: str = _f("receipt", "receipt: done when a consumer acknowledges; broker: done at PUBACK.",
                       choices=MQTT_DELIVERY)
    receipt_timeout: float = _f(30.0, "Republish an alert not acknowledged by a consumer within this many seconds.")
    heartbeat_interval: float = _f(30.0, "Seconds between status heartbeats.")


@dataclass
class AlertsSection:
    previews: bool = _f(True, "Publish a key-image preview of every alert revision on "
                        "{prefix}/{site}/{device}/previews (windowed, downscaled, made from the HU only: no "
                        "overlays of the original, no PHI; the evidence region framed in red; docs/ALERTS.md).")
    preview_size: int = _f(256, "Longest side of a preview in pixels (16-1024); never larger than the slice.")
    preview_max_bytes: int = _f(65536, "Most bytes of a preview image (1024-1048576): PNG when it fits, else JPEG "
                                "at falling quality, then smaller.")
    preview_format: str = _f("auto", "auto (PNG, else JPEG when PNG is over the cap) | png | jpeg.",
                             choices=PREVIEW_FORMATS)


@dataclass
class DicomSection:
    port: int = _f(0, "C-STORE receiver port (0: no receiver).")
    ae_title: str = _f("EDGE_AGENT", "Our AE title.")
    bind: str = _f("0.0.0.0", "Address the receiver listens on.")
    allowed_calling_aets: list = _f([], "Calling AE titles accepted (empty: any).")
    tls_cert: str = _f("", "PEM certificate for DICOM TLS (with tls_key): the port then takes TLS 1.2+ only.",
                       hashed=False)
    tls_key: str = _f("", "Unencrypted PEM private key of tls_cert.", hashed=False)
    tls_ca: str = _f("", "PEM CA certificates: every peer must present a certificate they signed (mutual TLS).",
                     hashed=False)


@dataclass
class PacsSection:
    destinations: list = _f([], "Where each final result goes as a DICOM SR and Key Object Selection: AET@host:port "
                            "(C-STORE), tls:AET@host:port (C-STORE over DICOM TLS) or the http(s):// service root of "
                            "a DICOMweb server (STOW-RS), each its own durable queue (docs/RESULTS.md); empty: none.")
    ae_title: str = _f("EDGE_AGENT", "Our calling AE title towards the destinations.")
    dead_after: float = _f(86400.0, "Seconds an object keeps being retried (back-off) before it becomes a dead "
                           "letter, kept and retried only by hand.")
    retry_max: float = _f(300.0, "Longest wait (s) between two tries of a destination that fails.")
    secondary_capture: bool = _f(False, "Also send, with each positive result, a secondary-capture image of its key "
                                 "slice (region framed, finding, model and disclaimer burnt in; no patient data) for "
                                 "PACS viewers that show neither SR nor key objects. Needs alerts.previews.")
    tls_ca: str = _f("", "PEM CA certificates that verify the PACS certificate of tls: and https:// destinations "
                     "(TLS 1.2+, host name checked); empty: the system trust store.", hashed=False)
    tls_cert: str = _f("", "PEM client certificate (with tls_key) for a PACS that demands mutual TLS.", hashed=False)
    tls_key: str = _f("", "Unencrypted PEM private key of tls_cert.", hashed=False)
    stow_token: str = _f("", "Bearer token for STOW-RS destinations (better: EDGE_AGENT_PACS_STOW_TOKEN); never "
                         "logged.", hashed=False, secret=True)
    stow_user: str = _f("", "HTTP basic user for STOW-RS destinations (with stow_password).", hashed=False)
    stow_password: str = _f("", "HTTP basic password of stow_user (better: EDGE_AGENT_PACS_STOW_PASSWORD); never "
                            "logged.", hashed=False, secret=True)


@dataclass
class MetricsSection:
    port: int = _f(0, "Prometheus /metrics and /healthz port (0: disabled).")
    bind: str = _f("127.0.0.1", "Address the metrics server listens on.")
    max_stage_age: float = _f(60.0, "/healthz fails when a stage has not reported for this many seconds.")


@dataclass
class ModelSettings:
    """``[models.<name>]``: one model's settings at this site (``<name>`` as in its manifest).

    Grows with per-model settings; every key is declared here, unknown keys
    are errors. No environment variables: the table is keyed by model name.
    """

    applies_to: dict = _f({}, "Site overrides of the model's manifest applies_to (same keys and checks as "
                          "docs/MANIFEST.md, e.g. kernels, slice_thickness_mm, contrast, qa_keywords); each key "
                          "given replaces the manifest's.")
    mode: str = _f("", "live | shadow for this model; empty: inference.mode.", choices=("", "live", "shadow"))
    alert_at: str = _f("", "Graded plug-in findings (coronary_calcium): the lowest grade that raises an alert, "
                       "e.g. \"100-399\" or \">=400\"; every grade is still reported in results. Empty: the "
                       "manifest's.")


MODELS = "models"  # the [models.<name>] tables: one ModelSettings per model, not a fixed section


@dataclass
class Config:
    agent: AgentSection = field(default_factory=AgentSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    series: SeriesSection = field(default_factory=SeriesSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    dicom: DicomSection = field(default_factory=DicomSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    pacs: PacsSection = field(default_factory=PacsSection)
    models: dict = field(default_factory=dict)  # {name: ModelSettings}, from [models.<name>] tables

    # -- derived paths -------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return Path(self.agent.state_dir)

    def mqtt_password(self) -> str | None:
        """The broker password from the environment or the password file (never the command line)."""
        env = os.environ.get("EDGE_AGENT_MQTT_PASSWORD")
        if env:
            return env
        if self.mqtt.password_file:
            try:
                return Path(self.mqtt.password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"mqtt.password_file {self.mqtt.password_file} cannot be read ({exc.strerror}); "
                                  "fix the path or its permissions.") from exc
        return None

    def applies_to_overrides(self) -> dict[str, dict]:
        """``{model name: applies_to overrides}`` for ``ModelSet.load(overrides=...)`` (models without any left out)."""
        return {name: dict(s.applies_to) for name, s in self.models.items() if s.applies_to}

    def alert_at_overrides(self) -> dict[str, str]:
        """``{model name: alert_at}`` for ``ModelSet.load(alert_at=...)`` (models without one left out)."""
        return {name: s.alert_at for name, s in self.models.items() if s.alert_at}


SECTIONS = {f.name: f.type for f in fields(Config) if f.name != MODELS}
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")  # as a manifest's name


def _section_types() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def _coerce(section: str, name: str, value: Any, target: type, source: str, secret: bool = False) -> Any:
    where = f"{section}.{name} ({source})"
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if target is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if target is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list):
                return [str(v) for v in value]
            raise ValueError
        if target is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    got = f"a {type(value).__name__}" if secret else repr(value)  # a secret's value is never shown
    raise ConfigError(f"{where} must be {target.__name__}, got {got}.")


def _apply(cfg: Config, data: dict, source: str) -> None:
    types = _section_types()
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a table of sections ({', '.join(SECTIONS)}).")
    for section, values in data.items():
        if section == MODELS:
            _apply_models(cfg, values, source)
            continue
        if section not in types:
            raise ConfigError(f"unknown section [{section}] in {source};{did_you_mean(section, (*SECTIONS, MODELS))}"
                              f" known sections: {', '.join((*SECTIONS, MODELS))}.")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] in {source} must be a table of settings.")
        obj = getattr(cfg, section)
        hints = get_type_hints(type(obj))
        known = {f.name: f for f in fields(obj)}
        for name, value in values.items():
            if name not in known:
                raise ConfigError(f"unknown setting {section}.{name} in {source};"
                                  f"{did_you_mean(name, known, prefix=section + '.')} known: {', '.join(known)}.")
            value = _coerce(section, name, value, hints[name], source, secret=known[name].metadata.get("secret", False))
            choices = known[name].metadata.get("choices")
            if choices:
                check_one_of(f"{section}.{name} ({source})", value, choices)
            setattr(obj, name, value)


def _apply_models(cfg: Config, tables: Any, source: str) -> None:
    """``[models.<name>]`` tables → ``cfg.models``; each applies_to checked like a manifest's."""
    from edge_agent.inference.manifest import check_applies_to_override  # noqa: PLC0415 - only when used

    if not isinstance(tables, dict):
        raise ConfigError(f"[models] in {source} must hold one table per model, e.g. [models.ich].")
    known = {f.name for f in fields(ModelSettings)}
    for name, values in tables.items():
        if not isinstance(name, str) or not _MODEL_NAME.match(name):
            raise ConfigError(f"[models.{name}] in {source}: a model name is lower-case letters, digits and _ . - "
                              "as in its manifest.")
        if not isinstance(values, dict):
            raise ConfigError(f"[models.{name}] in {source} must be a table of settings ({', '.join(known)}).")
        settings = cfg.models.setdefault(name, ModelSettings())
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown setting models.{name}.{key} in {source};"
                                  f"{did_you_mean(key, known, prefix=f'models.{name}.')} known: {', '.join(known)}.")
            if key == "applies_to":
                check_applies_to_override(name, value, source)
                settings.applies_to = {**settings.applies_to, **value}
                continue
            spec = next(f for f in fields(ModelSettings) if f.name == key)
            value = _coerce(f"models.{name}", key, value, get_type_hints(ModelSettings)[key], source)
            choices = spec.metadata.get("choices")
            if choices:
                check_one_of(f"models.{name}.{key} ({source})", value, choices)
            setattr(settings, key, value)


def load_file(path: str | Path) -> dict:
    """Parse a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc}); check the path.") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one sentence
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {path} is not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'TOML'}: {first}.") from exc
    return data


def did_you_mean(name: str, candidates, *, prefix: str = "") -> str:
    """`` did you mean X?`` for the closest candidate (``""`` when none is close): one wording for every typo."""
    candidates = list(candidates)
    longer = sorted((c for c in candidates if c.startswith(name) and len(name) >= 3), key=len)  # a cut-off name
    close = longer[:1] or difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" did you mean {prefix}{close[0]}?" if close else ""


ENV_PREFIX = "EDGE_AGENT_"
# EDGE_AGENT_ variables that are not EDGE_AGENT_<SECTION>_<KEY> config keys, yet mean something:
# the MQTT secrets and TLS paths (edge_agent/alerts/settings.py; each also as <NAME>_FILE naming a file),
# and knobs of the project's own tests and CI (tests/alerts/test_chaos.py, .ci/run).
ENV_EXTRAS = frozenset({
    *(f"EDGE_AGENT_MQTT_{name}{suffix}" for name in ("USERNAME", "PASSWORD", "CA_FILE", "CERT_FILE", "KEY_FILE")
      for suffix in ("", "_FILE")),
    "EDGE_AGENT_CHAOS_SECONDS", "EDGE_AGENT_CHAOS_SEED", "EDGE_AGENT_CI_VENV",
})


def env_keys() -> dict[str, tuple[str, str]]:
    """``{EDGE_AGENT_<SECTION>_<FIELD>: (section, field)}`` for every config key."""
    return {f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}": (section, f.name)
            for section, cls in _section_types().items() for f in fields(cls)}


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Refuse an ``EDGE_AGENT_`` variable that names no config key (a typo would be ignored silently)."""
    environ = os.environ if environ is None else environ
    known = env_keys()
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or name in ENV_EXTRAS:
            continue
        # Compared without the common prefix, which would make every name look close to every other.
        hint = did_you_mean(name[len(ENV_PREFIX):], [k[len(ENV_PREFIX):] for k in (*known, *ENV_EXTRAS)],
                            prefix=ENV_PREFIX)
        raise ConfigError(f"unknown environment variable {name};{hint} an {ENV_PREFIX} variable must name a "
                          f"config key as {ENV_PREFIX}<SECTION>_<KEY> (README, Configuration); rename or unset it.")


def env_overrides(environ: dict[str, str] | None = None) -> dict:
    """``EDGE_AGENT_<SECTION>_<FIELD>`` variables as a nested dict (secrets excluded).

    Raises :class:`ConfigError` for an ``EDGE_AGENT_`` variable that names no key (:func:`check_environment`).
    """
    environ = os.environ if environ is None else environ
    check_environment(environ)
    out: dict[str, dict] = {}
    types = _section_types()
    for section, cls in types.items():
        for f in fields(cls):
            key = f"EDGE_AGENT_{section.upper()}_{f.name.upper()}"
            if key in environ:
                out.setdefault(section, {})[f.name] = environ[key]
    return out


def load_config(path: str | Path | None = None, *, overrides: dict | None = None,
                environ: dict[str, str] | None = None) -> Config:
    """Build the effective config: defaults < file < environment < ``overrides`` (CLI flags)."""
    cfg = Config()
    if path:
        _apply(cfg, load_file(path), str(path))
    _apply(cfg, env_overrides(environ), "environment")
    if overrides:
        clean = {s: {k: v for k, v in vals.items() if v is not None} for s, vals in overrides.items()}
        _apply(cfg, {s: v for s, v in clean.items() if v}, "command line")
    validate(cfg)
    return cfg


# -- the rules of values ------------------------------------------------------------------------------------
# One function per rule, each with its one sentence, naming the value as the caller knows it: validate() checks
# a config's values with them under their keys ("ingest.poll_interval"); what code also builds without a config
# (MqttSettings, IngestSettings, PreviewSettings, MetricsServer, StorageReceiver, Agent) calls the same function
# under its own name, so a rule is written once and worded once. Settings built from a validated config pass them.

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 Table 6.2-1 (AE): no backslash, no control chars


def check_positive(key: str, value: float) -> None:
    """More than 0 (a duration in seconds, an interval)."""
    if value <= 0:
        raise ConfigError(f"{key} must be greater than 0.")


def check_at_least(key: str, value: int, least: int, meaning: str = "") -> None:
    """``least`` or more; ``meaning`` (e.g. `` (0: one per core)``) follows the bound."""
    if value < least:
        raise ConfigError(f"{key} must be at least {least}{meaning}.")


def check_seconds_or_zero(key: str, value: float, zero: str) -> None:
    """0 (meaning ``zero``) or more seconds."""
    if value < 0:
        raise ConfigError(f"{key} must be 0 ({zero}) or a number of seconds, got {value:g}.")


def check_between(key: str, value: int, low: int, high: int, unit: str = "") -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low} and {high}{unit}, got {value}.")


def check_port(key: str, value: int) -> None:
    """A TCP port number, 0 (none, or any free one) included."""
    if not 0 <= value <= 65535:
        raise ConfigError(f"{key} must be a TCP port (0-65535), got {value}.")


def check_one_of(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}.")


def check_topic_level(key: str, value: str) -> None:
    """One level of an MQTT topic (site, device, prefix): not empty, no separator, no wildcard."""
    if not value or any(c in value for c in "/+#"):
        raise ConfigError(f"{key} must be a non-empty MQTT topic level without '/', '+' or '#', got {value!r}.")


def check_ae_title(key: str, value: str) -> str:
    """A DICOM AE title (1-16 printable ASCII characters, no backslash, not all spaces); returns it stripped."""
    if not _AE_TITLE.match(value) or not value.strip():
        raise ConfigError(f"{key} {value!r} is not a valid DICOM AE title; use 1 to 16 printable ASCII characters "
                          "without a backslash.")
    return value.strip()


def check_broker_url(key: str, url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` → (host, port, tls); never shows credentials."""
    use = "use mqtt://host:port or mqtts://host:port"
    try:
        parts = urlsplit(url)
        credentials = parts.username or parts.password
    except ValueError as exc:
        raise ConfigError(f"{key} {url!r} is malformed ({exc}); {use}.") from None
    if credentials:
        raise ConfigError(f"{key} must not carry credentials; set EDGE_AGENT_MQTT_USERNAME and "
                          "EDGE_AGENT_MQTT_PASSWORD (or *_FILE) in the environment or the config file instead.")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"{key} must start with mqtt:// or mqtts://, got {url!r}.")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{key} {url!r} is malformed ({exc}); {use}.") from None
    if not parts.hostname:
        raise ConfigError(f"{key} {url!r} names no host; {use}.")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def validate(cfg: Config) -> None:
    """Every check of a config's values that types and choices alone cannot express: the one place (the settings
    built from the config trust it)."""
    for section, name in (("ingest", "poll_interval"), ("ingest", "stable_seconds"), ("series", "settle"),
                          ("ingest", "retry_timeout"), ("ingest", "rescan_interval"), ("series", "max_open"),
                          ("mqtt", "receipt_timeout"), ("mqtt", "heartbeat_interval"), ("metrics", "max_stage_age")):
        check_positive(f"{section}.{name}", getattr(getattr(cfg, section), name))
    check_seconds_or_zero("agent.summary_interval", cfg.agent.summary_interval, "no summary")
    for section, name in (("series", "queue_size"), ("series", "batch")):
        check_at_least(f"{section}.{name}", getattr(getattr(cfg, section), name), 1)
    check_at_least("ingest.workers", cfg.ingest.workers, 0, " (0: one per core)")
    for section, name in (("dicom", "port"), ("metrics", "port"), ("mqtt", "embedded_port")):
        check_port(f"{section}.{name}", getattr(getattr(cfg, section), name))
    if cfg.mqtt.broker:
        check_broker_url("mqtt.broker", cfg.mqtt.broker)
    for section, name in (("agent", "site"), ("agent", "device"), ("mqtt", "prefix")):
        check_topic_level(f"{section}.{name}", getattr(getattr(cfg, section), name))
    check_ae_title("dicom.ae_title", cfg.dicom.ae_title)
    for title in cfg.dicom.allowed_calling_aets:
        check_ae_title("dicom.allowed_calling_aets", title)
    check_ae_title("pacs.ae_title", cfg.pacs.ae_title)
    a = cfg.alerts
    check_between("alerts.preview_size", a.preview_size, 16, 1024, " pixels")
    check_between("alerts.preview_max_bytes", a.preview_max_bytes, 1024, 1 << 20)
    if cfg.pacs.dead_after <= 0 or cfg.pacs.retry_max <= 0:
        raise ConfigError("pacs.dead_after and pacs.retry_max must be greater than 0 seconds.")
    if cfg.pacs.destinations:
        from edge_agent.results.destination import parse_destination  # noqa: PLC0415 - only when set

        for text in cfg.pacs.destinations:
            parse_destination(text)
    _validate_pacs_tls_and_credentials(cfg.pacs)
    if bool(cfg.dicom.tls_cert) != bool(cfg.dicom.tls_key):
        raise ConfigError("dicom.tls_cert and dicom.tls_key go together; set both for DICOM TLS, or neither.")
    if cfg.dicom.tls_ca and not cfg.dicom.tls_cert:
        raise ConfigError("dicom.tls_ca needs dicom.tls_cert and dicom.tls_key: peers are checked over TLS only.")


def _validate_pacs_tls_and_credentials(pacs: PacsSection) -> None:
    """pacs.tls_* files readable, certificate and key together; STOW-RS credentials one way, complete (the
    values of secrets never appear in a sentence)."""
    if bool(pacs.tls_cert) != bool(pacs.tls_key):
        raise ConfigError("pacs.tls_cert and pacs.tls_key go together; set both for a PACS that demands mutual TLS, "
                          "or neither.")
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(pacs, name)
        if not path:
            continue
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise ConfigError(f"pacs.{name} {path} cannot be read ({exc.strerror or type(exc).__name__}); fix the "
                              "path or its permissions.") from None
    if pacs.stow_token and (pacs.stow_user or pacs.stow_password):
        raise ConfigError("pacs.stow_token and pacs.stow_user / pacs.stow_password are two ways to sign in to a "
                          "STOW-RS destination; set one of them, not both.")
    if bool(pacs.stow_user) != bool(pacs.stow_password):
        raise ConfigError("pacs.stow_user and pacs.stow_password go together (HTTP basic); set both, or neither.")


#: Hex digits kept of the configuration's sha256 (``config_hash``): 64 bits, plenty to tell configs apart.
CONFIG_HASH_HEX = 16


def config_hash(cfg: Config) -> str:
    """A stable id of the effective configuration: the first 16 hex digits of the sha256 of every setting.

    Every section and ``[models.<name>]`` table as canonical JSON (sorted keys, no spaces), without the
    credentials and TLS material (the fields declared ``hashed=False``: MQTT username, password file, CA,
    certificate and key paths; DICOM TLS certificate, key and CA; the PACS TLS files and STOW-RS credentials):
    rotating those changes nothing the agent decides. The MQTT password is not a setting at all (environment or
    file only), so it never counts. The same settings give the same hash on any machine and after any restart.
    """
    import hashlib  # noqa: PLC0415
    import json  # noqa: PLC0415

    body: dict[str, Any] = {}
    for section in _section_types():
        obj = getattr(cfg, section)
        body[section] = {f.name: getattr(obj, f.name) for f in fields(obj) if f.metadata.get("hashed", True)}
    body[MODELS] = {name: {f.name: getattr(s, f.name) for f in fields(s)} for name, s in sorted(cfg.models.items())}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:CONFIG_HASH_HEX]


def reference_markdown() -> str:
    """The configuration reference (README), generated from the field declarations."""
    lines = []
    for section, cls in _section_types().items():
        lines.append(f"\n**[{section}]**\n")
        lines.append("| key | default | env | meaning |")
        lines.append("|---|---|---|---|")
        for f in fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            doc = f.metadata["doc"].replace("|", "\\|")  # a bare | would split the table cell
            lines.append(f"| `{f.name}` | `{default!r}` | `EDGE_AGENT_{section.upper()}_{f.name.upper()}` | {doc} |")
    lines.append("\n**`[models.<name>]`** (one table per model, named as in its manifest)\n")
    lines.append("| key | default | env | meaning |")
    lines.append("|---|---|---|---|")
    for f in fields(ModelSettings):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        doc = f.metadata["doc"].replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{default!r}` | none | {doc} |")
    return "\n".join(lines) + "\n"
