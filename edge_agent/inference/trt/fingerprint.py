"""Engine fingerprints: what an engine was built from and for.

A TensorRT engine runs only on the TensorRT version and GPU it was built with
(on a Jetson: the JetPack install). ``edge-agent convert`` writes a JSON
fingerprint beside every engine (``model.engine`` → ``model.engine.json``);
the loader compares it with this machine and refuses a mismatched or corrupt
engine with a sentence that says to run ``convert``.

No TensorRT or pycuda import happens here: fingerprints are read, written and
compared on any machine (``inspect`` uses them on a laptop).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_agent import __version__
from edge_agent.errors import EdgeAgentError

SCHEMA = 1
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
PRECISIONS = ("fp32", "fp16", "int8")


class EngineRefused(EdgeAgentError):
    """An engine does not match this machine or its ONNX model, or is corrupt."""

    exit_code = 1


@dataclass(frozen=True)
class Platform:
    """What an engine depends on, read from this machine."""

    tensorrt_version: str | None
    device_name: str | None
    compute_capability: str | None
    l4t_release: str | None


@dataclass
class Fingerprint:
    """The JSON stored beside an engine (``<engine>.json``)."""

    onnx_sha256: str
    engine_sha256: str
    tensorrt_version: str
    device_name: str
    compute_capability: str
    l4t_release: str | None
    precision: str
    dla_core: int | None = None
    # input name -> {"min": [...], "opt": [...], "max": [...]}
    profiles: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    workspace_mib: int | None = None
    created_utc: str = ""
    edge_agent_version: str = __version__
    schema: int = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fingerprint":
        """Build from parsed JSON; raises ValueError/TypeError/KeyError on a malformed one."""
        if d.get("schema") != SCHEMA:
            raise ValueError(f"unknown fingerprint schema {d.get('schema')!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        fp = cls(**d)
        if fp.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {fp.precision!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", fp.onnx_sha256) or not re.fullmatch(r"[0-9a-f]{64}", fp.engine_sha256):
            raise ValueError("sha256 fields must be 64 hex digits")
        return fp


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_path(engine_path: str | Path) -> Path:
    """``model.engine`` → ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_l4t_release(path: Path = NV_TEGRA_RELEASE) -> str | None:
    """L4T release from ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.0, ...`` → ``36.4.0``)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def current_platform() -> Platform:
    """This machine's TensorRT version, GPU 0 name and compute capability, L4T release.

    Each part is None when it cannot be read (no TensorRT, no pycuda, no GPU).
    pycuda's device queries need ``cuda.init()`` but no context.
    """
    from edge_agent.inference.trt import _try_import, tensorrt_version

    name = capability = None
    cuda, _ = _try_import("pycuda.driver")
    if cuda is not None:
        try:
            cuda.init()
            device = cuda.Device(0)
            name = str(device.name())
            capability = "{}.{}".format(*device.compute_capability())
        except Exception:  # noqa: BLE001 - no GPU or no driver: leave unknown
            name = capability = None
    return Platform(tensorrt_version(), name, capability, read_l4t_release())


def make_fingerprint(onnx_path: str | Path, engine_path: str | Path, platform: Platform, *, precision: str,
                     dla_core: int | None = None, profiles: dict | None = None,
                     workspace_mib: int | None = None) -> Fingerprint:
    """Fingerprint of a freshly built engine on ``platform``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    return Fingerprint(
        onnx_sha256=sha256_file(onnx_path),
        engine_sha256=sha256_file(engine_path),
        tensorrt_version=str(platform.tensorrt_version),
        device_name=str(platform.device_name),
        compute_capability=str(platform.compute_capability),
        l4t_release=platform.l4t_release,
        precision=precision,
        dla_core=dla_core,
        profiles={k: {kk: [int(x) for x in vv] for kk, vv in v.items()} for k, v in (profiles or {}).items()},
        workspace_mib=workspace_mib,
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def write_fingerprint(fp: Fingerprint, engine_path: str | Path) -> Path:
    """Write ``<engine>.json`` atomically (temp file + rename)."""
    path = fingerprint_path(engine_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fp.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _convert_hint(engine_path: Path) -> str:
    return f"run 'edge-agent convert MODEL.onnx --output {engine_path}' on this machine to rebuild it"


def read_fingerprint(engine_path: str | Path, fingerprint_file: str | Path | None = None) -> Fingerprint:
    """Read and validate the fingerprint beside ``engine_path`` (or ``fingerprint_file``); refuse a bad one."""
    engine_path = Path(engine_path)
    path = Path(fingerprint_file) if fingerprint_file is not None else fingerprint_path(engine_path)
    try:
        data = json.loads(path.read_text())
        return Fingerprint.from_dict(data)
    except FileNotFoundError:
        raise EngineRefused(f"Engine {engine_path.name} has no fingerprint file {path.name} beside it, so "
                            f"nothing says what it was built for; {_convert_hint(engine_path)}.") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise EngineRefused(f"The fingerprint {path.name} of engine {engine_path.name} is unreadable "
                            f"({exc}); {_convert_hint(engine_path)}.") from None


def mismatches(fp: Fingerprint, platform: Platform, onnx_sha256: str | None = None) -> list[str]:
    """Human-readable differences between an engine's fingerprint and this machine (empty: it fits)."""
    problems = []
    if onnx_sha256 is not None and fp.onnx_sha256 != onnx_sha256:
        problems.append("it was built from a different ONNX file than the manifest's")
    pairs = [("TensorRT", fp.tensorrt_version, platform.tensorrt_version),
             ("GPU", fp.device_name, platform.device_name),
             ("compute capability", fp.compute_capability, platform.compute_capability),
             ("L4T release", fp.l4t_release, platform.l4t_release)]
    for what, built, here in pairs:
        if built != here:
            problems.append(f"it was built for {what} {built or 'none'} but this machine has {here or 'none'}")
    return problems


def verify_engine(engine_path: str | Path, platform: Platform, onnx_sha256: str | None = None,
                  fingerprint_file: str | Path | None = None) -> Fingerprint:
    """Refuse (EngineRefused) an engine that is corrupt or does not fit ``platform``; return its fingerprint.

    Checks, in order: fingerprint present and valid, engine bytes unchanged
    (sha256), ONNX sha256 (when given), TensorRT version, GPU, compute
    capability and L4T release.
    """
    engine_path = Path(engine_path)
    fp = read_fingerprint(engine_path, fingerprint_file)
    try:
        actual = sha256_file(engine_path)
    except OSError as exc:
        raise EngineRefused(f"Engine {engine_path} cannot be read ({exc.strerror}); "
                            f"{_convert_hint(engine_path)}.") from None
    if actual != fp.engine_sha256:
        raise EngineRefused(f"Engine {engine_path.name} is corrupt or was changed after it was built "
                            f"(its sha256 differs from its fingerprint); {_convert_hint(engine_path)}.")
    problems = mismatches(fp, platform, onnx_sha256)
    if problems:
        raise EngineRefused(f"Engine {engine_path.name} does not fit this machine: {'; '.join(problems)}; "
                            f"{_convert_hint(engine_path)}.")
    return fp
