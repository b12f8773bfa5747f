"""``edge-agent doctor``: check this machine, one line per check, each ``OK``, ``WARN`` or ``FAIL`` + what to fix.

Exit status 1 when any check FAILs. GPU-side checks live in
:mod:`edge_agent.inference.trt.health`; the machine checks (inotify limits,
folders, disk, broker, clock) are here. Nothing is changed on the machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import socket
import ssl
import struct
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import click

INOTIFY = Path("/proc/sys/fs/inotify")
MIN_WATCHES, MIN_INSTANCES = 65536, 128
DISK_FAIL, DISK_WARN = 1 << 30, 5 << 30

Check = tuple[str, str, str]  # (level, subject, message)


def inotify_check(root: Path = INOTIFY) -> list[Check]:
    """max_user_watches / max_user_instances from /proc (watchdog uses one watch per folder)."""
    out = []
    for name, minimum in (("max_user_watches", MIN_WATCHES), ("max_user_instances", MIN_INSTANCES)):
        try:
            value = int((root / name).read_text().strip())
        except (OSError, ValueError):
            out.append(("WARN", f"inotify {name}", f"cannot read {root / name}; the watcher may need --poll"))
            continue
        if value < minimum:
            out.append(("WARN", f"inotify {name}", f"{value} is low; raise it: sysctl fs.inotify.{name}={minimum} "
                        f"(and persist it in /etc/sysctl.d/)"))
        else:
            out.append(("OK", f"inotify {name}", str(value)))
    return out


def folder_check(path: Path, what: str, *, write: bool = True) -> Check:
    """A folder exists and this user can list, read (and write) it."""
    if not path.exists():
        return "FAIL", what, f"{path} does not exist; create it (mkdir -p {path}) or fix the flag"
    if not path.is_dir():
        return "FAIL", what, f"{path} is not a folder; point the flag at a folder"
    mode = os.R_OK | os.X_OK | (os.W_OK if write else 0)
    if not os.access(path, mode):
        need = "read, write and list" if write else "read and list"
        return "FAIL", what, f"{path} is not {need}able by this user; fix its owner/permissions (chown/chmod)"
    return "OK", what, f"{path} is {'writable' if write else 'readable'}"


def disk_check(path: Path) -> Check:
    """Free space on the filesystem holding ``path``."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    text = f"{free / 2**30:.1f} GiB free on the filesystem of {path}"
    if free < DISK_FAIL:
        return "FAIL", "disk", f"only {text}; free space or move --state-dir/--watch to a larger disk"
    if free < DISK_WARN:
        return "WARN", "disk", f"{text}; keep more than 5 GiB for series, quarantine and the outbox"
    return "OK", "disk", text


def _mqtt_connect_packet(client_id: str = "edge-agent-doctor") -> bytes:
    """A minimal MQTT 3.1.1 CONNECT (clean session, keepalive 10 s) — MQTT 3.1.1 §3.1."""
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"
    payload = struct.pack("!H", len(cid)) + cid
    remaining = len(variable) + len(payload)
    return bytes([0x10, remaining]) + variable + payload


CONNACK = {0: "accepted", 1: "refused: protocol version", 2: "refused: client id", 3: "server unavailable",
           4: "bad user name or password", 5: "not authorised"}


def broker_check(url: str, timeout: float = 3.0) -> Check:
    """Open a TCP (TLS for mqtts://) connection, send CONNECT, read CONNACK, DISCONNECT."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        return "FAIL", "broker", f"{url!r} is not a broker URL; use mqtt://HOST:1883 or mqtts://HOST:8883"
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    where = f"{parts.hostname}:{port}"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout) as raw:
            sock = ssl.create_default_context().wrap_socket(raw, server_hostname=parts.hostname) \
                if parts.scheme == "mqtts" else raw
            sock.settimeout(timeout)
            sock.sendall(_mqtt_connect_packet())
            reply = sock.recv(4)
            if len(reply) == 4 and reply[0] == 0x20:
                sock.sendall(b"\xe0\x00")
    except ssl.SSLError as exc:
        return "FAIL", "broker", f"TLS with {where} failed ({exc.reason or exc}); check the CA and the host name"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return "FAIL", "broker", f"cannot reach the broker at {where} ({reason}); start it, open the firewall or fix --broker"
    if len(reply) != 4 or reply[0] != 0x20:
        return "FAIL", "broker", f"{where} answered but not as an MQTT broker; check the port"
    code = reply[3]
    if code == 0:
        return "OK", "broker", f"{where} accepted an MQTT connection"
    if code in (4, 5):
        return "OK", "broker", f"{where} is reachable and requires credentials ({CONNACK[code]})"
    return "FAIL", "broker", f"{where} refused the connection ({CONNACK.get(code, code)}); check the broker's config"


PACS_STALE_S = 600.0


def pacs_queue_check(state_dir: Path) -> list[Check]:
    """One line per PACS destination of ``<state-dir>/pacs.sqlite3``: delivered, waiting, dead letters."""
    path = state_dir / "pacs.sqlite3"
    if not path.is_file():
        return [("OK", "PACS queue", f"none in {state_dir} (no PACS destination has been configured)")]
    from edge_agent.results.queue import read_stats

    try:
        stats = read_stats(path)
    except Exception as exc:  # noqa: BLE001 - a damaged or locked file is one FAIL line
        return [("FAIL", "PACS queue", f"{path} cannot be read ({type(exc).__name__}); check the file and its "
                                       "permissions")]
    out: list[Check] = []
    for destination, e in sorted(stats.items()):
        waiting = e["pending"] + e["sending"]
        text = f"{e['done']} delivered, {waiting} waiting"
        if e["oldest_pending_age_s"] is not None:
            text += f" (oldest {e['oldest_pending_age_s']:.0f} s" + (f", last error: {e['last_error']}" if
                                                                    e["last_error"] else "") + ")"
        if e["dead"]:
            out.append(("FAIL", f"PACS {destination}", f"{text}, {e['dead']} dead letters; fix the destination, "
                        "then restart the agent with --retry-dead-letters (docs/RESULTS.md)"))
        elif waiting and (e["oldest_pending_age_s"] or 0) >= PACS_STALE_S:
            out.append(("WARN", f"PACS {destination}", f"{text}; is the destination up and does it accept us?"))
        else:
            out.append(("OK", f"PACS {destination}", text))
    return out or [("OK", "PACS queue", "empty")]


def pacs_echo_check(destination: str, calling_ae_title: str = "EDGE_AGENT", timeout: float = 5.0) -> Check:
    """A C-ECHO (Verification, PS3.4 A.4) to ``AET@host:port``."""
    from edge_agent.errors import ConfigError
    from edge_agent.results.destination import parse_destination

    try:
        d = parse_destination(destination)
    except ConfigError as exc:
        return "FAIL", "PACS echo", str(exc).rstrip(".")
    if d.kind != "dimse":  # TLS material and STOW-RS credentials are settings: pacs_destination_checks has them
        return ("WARN", f"PACS {d}", f"a {d.transport} destination is not tried without the agent's settings; "
                                     "pass --config FILE (pacs.tls_*, pacs.stow_*) or run `edge-agent run --check`")
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
    if not assoc.is_established:
        why = "rejected the association (check its AE title and that it knows ours)" if assoc.is_rejected else \
            "did not answer (start it, open the firewall or fix the host and port)"
        return "FAIL", f"PACS {d}", why
    status = assoc.send_c_echo()
    assoc.release()
    code = getattr(status, "Status", None)
    if code != 0:
        return "WARN", f"PACS {d}", f"accepted an association but answered C-ECHO with {code!r}"
    return "OK", f"PACS {d}", "answered C-ECHO"


def pacs_destination_checks(destinations: tuple[str, ...], config_file: Path | None, overrides: dict) -> list[Check]:
    """Each ``--pacs`` destination, tried as the agent would with this configuration: plain C-STORE ones by C-ECHO
    from ``pacs.ae_title``; ``tls:`` and STOW-RS ones by ``run --check``'s own test, with ``pacs.tls_*`` and
    ``pacs.stow_*`` (a config that does not load: C-ECHO from the default AE title, the others not tried)."""
    from edge_agent.config import load_config
    from edge_agent.errors import EdgeAgentError

    try:
        cfg = load_config(config_file, overrides=overrides)
    except EdgeAgentError:
        return [pacs_echo_check(d) for d in destinations]  # the header line says why the config did not load
    from edge_agent.results.destination import parse_destination
    from edge_agent.service.preflight import pacs_checks

    out: list[Check] = []
    for text in destinations:
        try:
            kind = parse_destination(text).kind
        except EdgeAgentError:
            kind = "dimse"  # pacs_echo_check says what is wrong with it
        if kind == "dimse":
            out.append(pacs_echo_check(text, cfg.pacs.ae_title))
            continue
        cfg.pacs.destinations = [text]
        out += [("OK" if c.ok else "FAIL", c.what, c.detail) for c in pacs_checks(cfg)]
    return out


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h): 'modes' first, 'status' after offset/freq/maxerror/esterror.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_byte * 256)]


STA_UNSYNC, TIME_ERROR = 0x0040, 5


def clock_check() -> Check:
    """Kernel clock discipline via adjtimex(2): synchronised by NTP/PTP (chrony, timesyncd) or not."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return "WARN", "clock", "cannot ask the kernel whether the clock is synchronised; check chrony/timesyncd"
    if state < 0:
        return "WARN", "clock", "adjtimex failed; check that chrony or systemd-timesyncd is running"
    if state == TIME_ERROR or tx.status & STA_UNSYNC:
        return "WARN", "clock", ("the clock is not NTP-synchronised; alert timestamps may drift — enable "
                                 "systemd-timesyncd or chrony and point it at the hospital's NTP server")
    return "OK", "clock", f"synchronised (max error {tx.maxerror / 1000:.1f} ms)"


def ort_check() -> Check:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    gpu = [p for p in providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
    text = f"onnxruntime {ort.__version__}: {', '.join(providers)}"
    return "OK", "onnxruntime", text + ("" if gpu else " (CPU only)")


def _provenance(manifest, backend: str) -> str:
    """What a model's outputs name it by (edge_agent.results.algorithm): sha256[:12], backend, precision,
    engine fingerprint."""
    from edge_agent.results.algorithm import LOG_HEX, algorithm_for

    a = algorithm_for(manifest, backend)
    return (f"sha256 {(a.sha256 or 'unknown')[:LOG_HEX]}, backend {a.backend or 'unknown'}, precision "
            f"{a.precision or 'none'}, engine fingerprint {a.engine_fingerprint or 'none'}")


def agent_check(config_file: Path | None, overrides: dict) -> Check:
    """The header: this agent's version and the hash of the configuration ``run`` would use with these settings."""
    from edge_agent import __version__
    from edge_agent.config import config_hash, load_config
    from edge_agent.errors import EdgeAgentError

    source = f"{config_file}, the environment and these flags" if config_file else \
        "the defaults, the environment and these flags; pass --config FILE for the agent's"
    try:
        digest = config_hash(load_config(config_file, overrides=overrides))
    except EdgeAgentError as exc:
        return "FAIL", "edge-agent", f"{__version__}; the configuration does not load: {str(exc).rstrip('.')}"
    return "OK", "edge-agent", f"{__version__}; config hash {digest} (of {source})"


def engines_check(folder: Path) -> list[Check]:
    """Every model folder's manifest loads; every TensorRT engine fits this machine. Each line also names the
    model's provenance as its alerts and results will (sha256[:12], backend, precision, engine fingerprint)."""
    from edge_agent.errors import EdgeAgentError
    from edge_agent.inference.manifest import MANIFEST_NAME, load_manifest
    from edge_agent.inference.trt.fingerprint import current_platform, verify_engine

    out: list[Check] = []
    manifests = sorted(folder.glob(f"*/{MANIFEST_NAME}")) if folder.is_dir() else []
    if not manifests:
        return [("FAIL", "models", f"no model folders with {MANIFEST_NAME} in {folder}; fix --engines")]
    platform = None
    for path in manifests:
        try:
            m = load_manifest(path)
        except EdgeAgentError as exc:
            out.append(("FAIL", f"model {path.parent.name}", str(exc).rstrip(".")))
            continue
        if m.plugin is not None:
            out.append(("OK", f"model {m.name}", f"{m.version}: the {m.plugin.name} plug-in (no network, CPU); "
                                                 f"{_provenance(m, 'plugin')}"))
            continue
        engine = m.artefacts.get("engine")
        if engine is None:
            out.append(("OK", f"model {m.name}", f"{m.version}: ONNX only (runs on ONNX Runtime); "
                                                 f"{_provenance(m, 'onnxrt')}"))
            continue
        platform = platform or current_platform()
        try:
            fp = verify_engine(engine.path, platform, m.artefacts["onnx"].sha256, engine.fingerprint)
            out.append(("OK", f"model {m.name}", f"{m.version}: engine fits ({fp.precision}, TensorRT "
                                                 f"{fp.tensorrt_version}); {_provenance(m, 'tensorrt')}"))
        except EdgeAgentError as exc:
            out.append(("WARN", f"model {m.name}", f"{m.version}: {str(exc).rstrip('.')} (until then it runs on ONNX "
                                                   f"Runtime; {_provenance(m, 'onnxrt')})"))
    return out


def run_checks(watch: Path | None, broker: str | None, engines: Path | None, state_dir: Path | None,
               pacs: tuple[str, ...] = (), config_file: Path | None = None) -> list[Check]:
    """All checks, in the order they are printed; the first is the header (agent version, config hash)."""
    from edge_agent.inference.trt import health

    overrides = {"agent": {"state_dir": None if state_dir is None else str(state_dir)},
                 "ingest": {"watch": None if watch is None else str(watch)}, "mqtt": {"broker": broker},
                 "inference": {"engines": None if engines is None else str(engines)},
                 "pacs": {"destinations": list(pacs) or None}}  # as `edge-agent run` maps the same flags
    checks: list[Check] = [agent_check(config_file, overrides)]
    for subject, fn in (("GPU", health.gpu_driver), ("TensorRT", health.tensorrt_check),
                        ("pycuda", health.pycuda_check), ("nvcc", health.nvcc_check)):
        level, message = _guarded(fn)
        checks.append((level, subject, message))
    checks.append(ort_check())
    checks.extend(inotify_check())
    if watch is not None:
        checks.append(folder_check(watch, "watch folder"))
    if state_dir is not None:
        checks.append(folder_check(state_dir, "state folder"))
    checks.append(disk_check(state_dir or watch or Path.cwd()))
    if broker is not None:
        checks.append(broker_check(broker))
    if state_dir is not None:
        checks.extend(pacs_queue_check(state_dir))
    if pacs:
        checks.extend(pacs_destination_checks(pacs, config_file, overrides))
    checks.append(clock_check())
    if engines is None:
        from edge_agent.engines import ENGINES_DIR

        engines = ENGINES_DIR
    checks.extend(engines_check(engines))
    return checks


def _guarded(fn: Callable[[], tuple[str, str]]) -> tuple[str, str]:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        return "FAIL", f"check crashed ({type(exc).__name__}: {exc}); report it"


@click.command("doctor")
@click.option("--watch", type=click.Path(path_type=Path), help="Watch folder to check (exists, permissions, disk).")
@click.option("--broker", help="Broker URL to try (mqtt://HOST:1883, mqtts://HOST:8883).")
@click.option("--engines", type=click.Path(path_type=Path), help="Folder of model folders (default: shipped models).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="State folder to check (writable, disk, PACS queue).")
@click.option("--pacs", multiple=True, metavar="DESTINATION",
              help="PACS destination to try (repeatable): AET@HOST:PORT by C-ECHO from pacs.ae_title; tls: and "
                   "http(s):// ones with --config's pacs.tls_* / pacs.stow_* settings.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="FILE", help="The agent's config file: the header shows its config hash (as alerts name it).")
def doctor(watch: Path | None, broker: str | None, engines: Path | None, state_dir: Path | None,
           pacs: tuple[str, ...], config_file: Path | None) -> None:
    """Check this machine: GPU, TensorRT, pycuda, ONNX Runtime, inotify, folders, disk, broker, PACS, clock, models.

    The first line names this agent's version and config hash; each model line its version, sha256, backend,
    precision and engine fingerprint — what its alerts, results and SRs name (docs/ALERTS.md, Provenance).
    """
    checks = run_checks(watch, broker, engines, state_dir, pacs, config_file)
    width = max(len(subject) for _, subject, _ in checks)
    for level, subject, message in checks:
        click.echo(f"{level:<4}  {subject:<{width}}  {message}")
    failed = sum(1 for level, _, _ in checks if level == "FAIL")
    warned = sum(1 for level, _, _ in checks if level == "WARN")
    click.echo(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    if failed:
        raise SystemExit(1)
