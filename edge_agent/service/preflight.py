"""``edge-agent run --check``: everything the daemon needs, tried without side effects.

One :class:`Check` per thing the agent will use, each ``OK`` or ``FAIL`` with
what to fix:

- the watch folder exists and can be read (and written, when the DICOM
  receiver writes into it or files are deleted after processing);
- the state folder (and a separate quarantine folder) exists and is writable,
  or can be created: its parent exists and is writable — nothing is created;
- the models load, their files match the sha256 in their manifests, and each
  runner starts (then is closed again);
- the broker answers: an MQTT CONNECT with the configured protocol,
  credentials and TLS, then DISCONNECT, within a short timeout (a separate
  client id, so a running agent's session is left alone); without a broker,
  the embedded broker's port is free;
- every port the agent would listen on (metrics, DICOM receiver, embedded
  broker) is in range and free: bound and released at once, with the same
  SO_REUSEADDR the servers use. A port held by an ``edge-agent run`` already
  running (an upgrade's check) is reported as such, not as a failure;
- every PACS destination accepts an association from our calling AE title with
  the SR and KO storage classes results use, and answers C-ECHO (released at
  once; nothing is stored) — over DICOM TLS for ``tls:`` destinations, a TLS
  handshake that fails told in one sentence; a STOW-RS destination answers a
  QIDO-RS search with the configured TLS and credentials.

Nothing here writes a file, creates a folder or leaves a thread running.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import Config
from edge_agent.errors import EdgeAgentError

#: How long the broker gets to answer CONNECT (TCP, TLS and CONNACK together).
BROKER_TIMEOUT_S = 5.0


@dataclass
class Check:
    """One line of ``run --check``: ``ok``, ``what`` was checked, ``detail`` (what was found, or what to fix)."""

    ok: bool
    what: str
    detail: str

    @property
    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL '}{self.what}: {self.detail}"


def _ok(what: str, detail: str) -> Check:
    return Check(True, what, detail)


def _fail(what: str, detail: str) -> Check:
    return Check(False, what, detail.rstrip("."))


# --------------------------------------------------------------------------- folders

def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _unreachable(what: str, exc: OSError, setting: str) -> Check:
    return _fail(what, f"cannot be looked at by this user ({exc.strerror or exc}); fix the permissions of the "
                       f"folders above it or set {setting}")


def watch_check(cfg: Config) -> Check:
    """The watch folder: exists (the agent never creates it), listable, writable when the agent writes there."""
    try:
        return _watch_check(cfg)
    except OSError as exc:  # a parent this user cannot enter
        return _unreachable(f"watch folder {cfg.ingest.watch}", exc, "ingest.watch / --watch")


def _watch_check(cfg: Config) -> Check:
    watch = Path(cfg.ingest.watch)
    what = f"watch folder {watch}"
    if not watch.exists():
        return _fail(what, "does not exist; create it or set ingest.watch / --watch")
    if not watch.is_dir():
        return _fail(what, "is not a folder; point ingest.watch / --watch at a folder")
    writers = [why for why, on in (("the DICOM receiver writes into it", bool(cfg.dicom.port)),
                                   ("ingest.delete_after_processing deletes from it",
                                    cfg.ingest.delete_after_processing)) if on]
    mode = os.R_OK | os.X_OK | (os.W_OK if writers else 0)
    if not os.access(watch, mode):
        need = "writable" if writers else "readable"
        reason = f" ({' and '.join(writers)})" if writers else ""
        return _fail(what, f"is not {need} by this user{reason}; fix its owner or permissions (chown/chmod)")
    return _ok(what, "readable and writable" if writers else "readable")


def state_check(path: Path, what: str, setting: str) -> Check:
    """A folder the agent writes: writable if it exists, else its parent exists and is writable (created at start)."""
    try:
        return _state_check(path, f"{what} {path}", setting)
    except OSError as exc:  # a parent this user cannot enter
        return _unreachable(f"{what} {path}", exc, setting)


def _state_check(path: Path, what: str, setting: str) -> Check:
    if path.exists():
        if not path.is_dir():
            return _fail(what, f"is not a folder; set {setting} to a folder")
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            return _fail(what, f"is not writable by this user; fix its owner or permissions, or set {setting}")
        return _ok(what, "writable")
    parent = path.parent
    if not parent.exists():
        found = _nearest_existing(parent)
        return _fail(what, f"does not exist and neither does its parent {parent} (the agent creates only the "
                           f"last folder); create it (mkdir -p {path}) or set {setting}"
                     + ("" if found.is_dir() else f" ({found} is a file)"))
    if not parent.is_dir():
        return _fail(what, f"cannot be created: {parent} is not a folder; set {setting}")
    if not os.access(parent, os.W_OK | os.X_OK):
        return _fail(what, f"does not exist and this user cannot create it in {parent}; create it with the right "
                           f"owner or set {setting}")
    return _ok(what, f"does not exist yet; the agent will create it in {parent}")


# --------------------------------------------------------------------------- models

def model_checks(cfg: Config) -> list[Check]:
    """The models load as the agent loads them (sha256 verified), each runner starts and is closed again."""
    from edge_agent.inference.backends import TrtOptions  # noqa: PLC0415
    from edge_agent.inference.models import ModelSet  # noqa: PLC0415 - onnxruntime is slow to import

    inference = cfg.inference
    try:
        models = ModelSet.load(Path(inference.engines) if inference.engines else None, backend=inference.backend,
                               threads=inference.threads or None, trt_options=TrtOptions.from_config(inference),
                               overrides=cfg.applies_to_overrides(), alert_at=cfg.alert_at_overrides())
    except EdgeAgentError as exc:
        return [_fail("models", str(exc))]
    out: list[Check] = []
    try:
        names = ", ".join(f"{m.manifest.name} {m.manifest.version}" for m in models)
        out.append(_ok("models", f"{names} (files match their sha256)"))
        for model in models:
            what = f"model {model.name} {model.manifest.version}"
            try:
                model.ensure_active()
            except EdgeAgentError as exc:
                out.append(_fail(what, f"does not start: {str(exc).rstrip('.')}"))
                continue
            out.append(_ok(what, f"starts on {model.runner.backend}"))
    finally:
        try:
            models.close()
        except EdgeAgentError:
            pass
    for name, changes in sorted(cfg.applies_to_overrides().items()):
        out.append(_ok(f"models.{name}.applies_to", f"site overrides of {', '.join(sorted(changes))}"))
    return out


# --------------------------------------------------------------------------- ports

def _listeners(port: int) -> list[int]:
    """Socket inodes listening on TCP ``port`` (any address), from /proc/net/tcp{,6}."""
    inodes = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.append(int(parts[9]))
    return inodes


def port_holder(port: int) -> tuple[int, list[str]] | None:
    """(pid, argv) of a process of this user listening on ``port``, or None if none can be seen."""
    wanted = {f"socket:[{inode}]" for inode in _listeners(port) if inode}
    if not wanted:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    return int(entry.name), [a.decode(errors="replace") for a in argv if a]
            except OSError:
                continue
    return None


def _is_running_agent(argv: list[str]) -> bool:
    names = {Path(a).name for a in argv}
    return "run" in argv and bool(names & {"edge-agent", "edge_agent"})


def port_check(what: str, host: str, port: int, setting: str) -> Check:
    """Bind ``host:port`` as the agent's server would (SO_REUSEADDR) and release it at once."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    what = f"{what} {where}"
    if not 1 <= port <= 65535:
        return _fail(what, f"{port} is not a TCP port; set {setting} to a port between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return _fail(what, f"{host!r} is not an address of this machine; use 0.0.0.0, 127.0.0.1 or one of its "
                           "interface addresses")
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            holder = port_holder(port)
            if holder is not None and _is_running_agent(holder[1]):
                return _ok(what, f"in use by the edge-agent already running (pid {holder[0]}); free again when it "
                                 "stops or restarts")
            by = f" by {Path(holder[1][0]).name} (pid {holder[0]})" if holder and holder[1] else ""
            return _fail(what, f"is already in use{by}; stop that program or set {setting} to a free port")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return _fail(what, f"needs privileges for this user (ports below 1024); use a port above 1023 or grant "
                               f"CAP_NET_BIND_SERVICE, or set {setting}")
        if exc.errno == errno.EADDRNOTAVAIL:
            return _fail(what, f"{host!r} is not an address of this machine; use 0.0.0.0, 127.0.0.1 or one of its "
                               "interface addresses")
        return _fail(what, f"cannot be bound ({exc.strerror or exc}); check the address and {setting}")
    return _ok(what, "free")


def _duplicate_ports(cfg: Config) -> list[Check]:
    ports = [(cfg.metrics.port, "metrics.port"), (cfg.dicom.port, "dicom.port")]
    if not cfg.mqtt.broker:
        ports.append((cfg.mqtt.embedded_port, "mqtt.embedded_port"))
    seen: dict[int, str] = {}
    out = []
    for port, name in ports:
        if not port:
            continue
        if port in seen:
            out.append(_fail(f"{seen[port]} and {name}", f"both are {port}; each listener needs its own port"))
        seen.setdefault(port, name)
    return out


# --------------------------------------------------------------------------- broker

def _mqtt_settings(cfg: Config):
    from edge_agent.alerts import MqttSettings  # noqa: PLC0415

    return MqttSettings.from_config(cfg)


def _connect_once(settings, protocol: str, timeout: float) -> tuple[str, object]:
    """('connack', reason code) | ('silent', None) | ('closed', None) after one CONNECT; raises OSError/ssl errors."""
    import paho.mqtt.client as paho  # noqa: PLC0415

    from edge_agent.alerts import mqtt  # noqa: PLC0415

    client_id = f"edge-agent-check-{settings.site}-{settings.device}-{os.getpid()}"  # never the agent's own id
    client = mqtt.make_client(settings, client_id, protocol)
    client.connect_timeout = timeout
    answer: dict = {}
    client.on_connect = lambda _c, _u, _flags, reason_code, _props: answer.setdefault("rc", reason_code)
    try:
        client.connect(**mqtt.connect_args(settings, protocol))
        deadline = time.monotonic() + timeout
        while "rc" not in answer and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS and "rc" not in answer:
                return "closed", None
        if "rc" not in answer:
            return "silent", None
        if not answer["rc"].is_failure:
            client.disconnect()
            client.loop(timeout=0.1)
        return "connack", answer["rc"]
    finally:
        sock = client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


def broker_check(cfg: Config, timeout: float = BROKER_TIMEOUT_S) -> list[Check]:
    """CONNECT with the configured protocol, credentials and TLS, then DISCONNECT; or the embedded broker's port."""
    if not cfg.mqtt.broker:
        port = cfg.mqtt.embedded_port
        start = "an embedded broker will be started on 127.0.0.1" + (f":{port}" if port else " (a free port)")
        out = [_ok("broker", f"none set (mqtt.broker / --broker); {start} (for trials; production needs the "
                             "hospital's broker)")]
        if port:
            out.append(port_check("embedded broker port", "127.0.0.1", port, "mqtt.embedded_port or mqtt.broker"))
        return out
    from edge_agent.alerts import mqtt  # noqa: PLC0415

    url = cfg.mqtt.broker
    what = f"broker {url}"
    try:
        settings = _mqtt_settings(cfg)
        address = settings.address
    except EdgeAgentError as exc:
        return [_fail(what, str(exc))]
    where = f"{address.host}:{address.port}"
    who = f" as {settings.username}" if settings.username else ""
    for protocol in mqtt.protocols_to_try(settings):
        try:
            outcome, code = _connect_once(settings, protocol, timeout)
        except EdgeAgentError as exc:  # TLS material that does not load
            return [_fail(what, str(exc))]
        except ssl.SSLCertVerificationError as exc:
            return [_fail(what, f"the broker's TLS certificate is not trusted ({exc.verify_message}); set mqtt.ca_file "
                                "to the CA that signed it, or fix the host name in mqtt.broker")]
        except ssl.SSLError as exc:
            return [_fail(what, f"the TLS handshake with {where} failed ({exc.reason or exc}); check mqtt.ca_file, "
                                "mqtt.cert_file/key_file and that the port speaks TLS (mqtts://)")]
        except socket.gaierror:
            return [_fail(what, f"the host name {address.host!r} does not resolve; fix mqtt.broker / --broker or DNS")]
        except (socket.timeout, TimeoutError):
            return [_fail(what, f"{where} did not answer within {timeout:.0f} s; check the address, the firewall "
                                "and that the broker runs")]
        except ConnectionRefusedError:
            return [_fail(what, f"nothing listens at {where} (connection refused); start the broker or fix "
                                "mqtt.broker / --broker")]
        except OSError as exc:
            return [_fail(what, f"cannot reach {where} ({exc.strerror or exc}); check the network and mqtt.broker")]
        if outcome == "connack" and not code.is_failure:
            return [_ok(what, f"accepted an MQTT {protocol} connection{who}"
                              + (" over TLS" if address.tls else "") + " (then disconnected)")]
        if outcome == "connack" and mqtt.is_protocol_refused(code):
            continue  # 'auto': try 3.1.1
        if outcome == "connack":
            text = mqtt.reason_text(code)
            if getattr(code, "value", code) in (0x04, 0x05, 0x86, 0x87):
                return [_fail(what, f"refused the connection{who}: {text}; check mqtt.username and the password "
                                    "(EDGE_AGENT_MQTT_PASSWORD or mqtt.password_file), or the broker's ACL")]
            return [_fail(what, f"refused the connection: {text}; check the broker's configuration")]
        if outcome == "silent" and protocol == "5" and settings.protocol == "auto":
            continue
        if outcome == "silent":
            return [_fail(what, f"{where} accepted TCP but sent no MQTT answer within {timeout:.0f} s; check the "
                                "port (mqtts:// for a TLS port) and mqtt.protocol")]
        if address.tls:
            return [_fail(what, f"{where} closed the connection; check mqtt.protocol, the client certificate "
                                "(mqtt.cert_file/key_file) and that the port is the broker's TLS port")]
        return [_fail(what, f"{where} closed the connection without an MQTT answer; check the port (a TLS port "
                            "needs mqtts://) and mqtt.protocol")]
    return [_fail(what, f"refuses every MQTT version tried ({', '.join(mqtt.protocols_to_try(settings))}); set "
                        "mqtt.protocol to what the broker speaks")]


# --------------------------------------------------------------------------- DICOM receiver and metrics

def dicom_checks(cfg: Config) -> list[Check]:
    if not cfg.dicom.port:
        return [_ok("DICOM receiver", "off (dicom.port / --dicom-port = 0)")]
    tls = "plain TCP"
    if cfg.dicom.tls_cert:
        from edge_agent.ingest.receiver import tls_context  # noqa: PLC0415

        try:
            tls_context(cfg.dicom.tls_cert, cfg.dicom.tls_key, cfg.dicom.tls_ca or None)
        except EdgeAgentError as exc:
            return [_fail("DICOM TLS", str(exc))]
        tls = "TLS" + (" with peer certificates" if cfg.dicom.tls_ca else "")
    callers = ", ".join(cfg.dicom.allowed_calling_aets) or "any calling AE title"
    return [_ok("DICOM receiver", f"{cfg.dicom.ae_title} on {cfg.dicom.bind} port {cfg.dicom.port}, {tls}; "
                                  f"accepts {callers}"),
            port_check("DICOM port", cfg.dicom.bind, cfg.dicom.port, "dicom.port / --dicom-port")]


def metrics_checks(cfg: Config) -> list[Check]:
    if not cfg.metrics.port:
        return [_ok("metrics", "off (metrics.port / --metrics-port = 0)")]
    return [port_check("metrics port", cfg.metrics.bind, cfg.metrics.port, "metrics.port / --metrics-port")]


# --------------------------------------------------------------------------- PACS destinations

#: How long a PACS destination gets to accept the association and answer C-ECHO.
PACS_TIMEOUT_S = 5.0
#: What the agent stores at a destination (edge_agent.results): Comprehensive 3D SR and Key Object Selection.
RESULT_STORAGE = (("1.2.840.10008.5.1.4.1.1.88.34", "Comprehensive 3D SR"),
                  ("1.2.840.10008.5.1.4.1.1.88.59", "Key Object Selection"))
VERIFICATION = "1.2.840.10008.1.1"
#: With pacs.secondary_capture: the key image's storage class too.
CAPTURE_STORAGE = ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image")


def result_storage(cfg: Config) -> tuple:
    """The storage SOP classes the results of this configuration send: (uid, name) pairs."""
    return RESULT_STORAGE + ((CAPTURE_STORAGE,) if cfg.pacs.secondary_capture else ())


def pacs_checks(cfg: Config, timeout: float = PACS_TIMEOUT_S) -> list[Check]:
    """Each destination, as its sender will reach it — a destination that is down, refuses us, fails the TLS
    handshake or would not accept SR/KO storage fails here rather than as dead letters a day later:

    * C-STORE (plain or ``tls:``): an association with our calling AE title proposing Verification and the two
      storage classes results use (over TLS with pacs.tls_*), one C-ECHO, then release;
    * STOW-RS: a QIDO-RS ``GET {root}/studies?limit=1`` with the configured TLS and credentials.

    Nothing is stored."""
    if not cfg.pacs.destinations:
        return [_ok("PACS", "no destinations (pacs.destinations / --pacs): results go to MQTT only")]
    from edge_agent.results.destination import parse_destination  # noqa: PLC0415
    from edge_agent.results.sender import SenderSettings  # noqa: PLC0415 - pynetdicom only where configured

    settings = SenderSettings.from_config(cfg.pacs)
    out = []
    for text in cfg.pacs.destinations:
        d = parse_destination(text)
        if d.kind == "stow":
            from edge_agent.results.stow import check  # noqa: PLC0415 - the HTTP library only where used

            ok, detail = check(d, settings, timeout)
            out.append(Check(ok, f"PACS {d}", detail if ok else detail.rstrip(".")))
            continue
        out.append(_dimse_check(cfg, d, settings, timeout))
    return out


def _dimse_check(cfg: Config, d, settings, timeout: float) -> Check:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian  # noqa: PLC0415
    from pynetdicom import AE  # noqa: PLC0415 - only where destinations are configured

    from edge_agent.results import tls  # noqa: PLC0415

    what = f"PACS {d}"
    tls_args, recorder = None, None
    if d.kind == "dimse-tls":
        try:
            context = settings.tls_context()
        except EdgeAgentError as exc:
            return _fail(what, str(exc))
        recorder = tls.FailureRecorder(context)
        tls_args = (context, d.host)

    def tls_failure() -> str | None:
        if recorder is None or recorder.error is None:
            return None
        return tls.explain(recorder.error, d.host, d.port, client_cert=bool(settings.tls_cert),
                           plain_form=d.plain_form)

    ae = AE(ae_title=cfg.pacs.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(VERIFICATION)
    storage = result_storage(cfg)
    for uid, _name in storage:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title, tls_args=tls_args)
    except Exception as exc:  # noqa: BLE001 - a host name that does not resolve, a socket error
        return _fail(what, tls_failure() or f"cannot connect ({type(exc).__name__}: {exc}); fix pacs.destinations "
                                            "or the network")
    if assoc.is_rejected:
        return _fail(what, f"rejected the association: add our calling AE title {cfg.pacs.ae_title} "
                           f"(pacs.ae_title) to the PACS's known modalities, and check that its AE title is "
                           f"{d.ae_title}")
    if not assoc.is_established:
        return _fail(what, tls_failure() or (
            f"no DICOM answer at {d.host}:{d.port} within {timeout:.0f} s (connection refused, aborted or timed "
            "out); check the host, the port and that the PACS runs"))
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        missing = [name for uid, name in storage if uid not in accepted]
        status = assoc.send_c_echo() if VERIFICATION in accepted else None
    finally:
        assoc.release()
    if missing:
        return _fail(what, f"does not accept {' and '.join(missing)} storage: results sent there would "
                           "become dead letters; enable those SOP classes at the PACS")
    echo = ("C-ECHO answered" if status is not None and getattr(status, "Status", None) == 0x0000
            else "accepts SR and KO storage (C-ECHO not answered)")
    if tls_args is not None:
        echo += (f" over DICOM TLS (certificate verified for {d.host}"
                 + (", our client certificate accepted)" if settings.tls_cert else ")"))
    return _ok(what, f"{echo}; accepts {', '.join(name for _, name in storage[:-1])} and {storage[-1][1]} "
                     f"storage from {cfg.pacs.ae_title}")


def run_preflight(cfg: Config, *, broker_timeout: float = BROKER_TIMEOUT_S) -> list[Check]:
    """Every check of ``run --check``, in the order printed."""
    checks = [watch_check(cfg), state_check(cfg.state_dir, "state folder", "agent.state_dir / --state-dir")]
    if cfg.ingest.quarantine_dir:
        checks.append(state_check(Path(cfg.ingest.quarantine_dir), "quarantine folder", "ingest.quarantine_dir"))
    checks += model_checks(cfg)
    checks += broker_check(cfg, broker_timeout)
    checks.append(_ok("delivery", f"{cfg.mqtt.delivery} (mqtt.delivery)"))
    checks += dicom_checks(cfg)
    checks += pacs_checks(cfg)
    checks += metrics_checks(cfg)
    checks += _duplicate_ports(cfg)
    return checks
