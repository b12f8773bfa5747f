"""Model manifests (``engines/<name>/manifest.json``, format in docs/MANIFEST.md).

A manifest says what a model finds, which series it applies to, how its
input is prepared, what tensors it takes and gives, how per-slice scores
become a series decision, and which artefacts belong to it (with sha256).
:func:`load_manifest` validates all of it — unknown keys are rejected and
every error is one sentence naming the field — and refuses an artefact whose
bytes do not match the recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_agent.decision import DecisionError, DecisionRule, PreliminaryRule, RULES
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.evidence import DomainSpec, EvidenceError, EvidenceSpec, parse_domain, parse_evidence
from edge_agent.inference import applies_to
from edge_agent.inference.applies_to import AppliesTo
from edge_agent.preprocess import PreprocessSpec

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
SEVERITIES = ("critical", "urgent", "significant", "routine", "info")
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64", "bool")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(EdgeAgentError):
    """A manifest is missing, malformed, or its artefacts do not match it."""

    exit_code = 2


@dataclass(frozen=True)
class FindingSpec:
    """One finding a model reports: ``code`` (e.g. ``ich``), display label, severity."""

    code: str
    label: str
    severity: str


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: shape with -1 for a dynamic dimension, numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Artefact:
    """A file that belongs to the model (``path`` resolved inside the model folder)."""

    path: Path
    sha256: str
    fingerprint: Path | None = None


@dataclass(frozen=True)
class PluginSpec:
    """A named non-neural step that computes the findings instead of a network (``edge_agent.plugins``).

    ``params``: the plug-in's own parameters, validated by it; ``alert_at``: the lowest of the plug-in's
    grades that raises an alert (None: every positive finding does).
    """

    name: str
    params: Any
    alert_at: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A validated model manifest."""

    name: str
    version: str
    description: str
    synthetic_training: bool
    findings: tuple[FindingSpec, ...]
    applies_to: AppliesTo
    preprocessing: PreprocessSpec | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    decision: DecisionRule
    artefacts: dict[str, Artefact]
    folder: Path
    evidence: EvidenceSpec | None = None  # what a positive finding must rest on (docs/EVIDENCE.md)
    domain: DomainSpec | None = None  # what a series must look like to be assessed at all
    plugin: PluginSpec | None = None  # a named non-neural step instead of a network (no inputs/outputs/artefacts)

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME


def _checks(r: "_Reader", parse, block: Any, name: str):
    """The manifest's ``evidence`` / ``domain`` block, parsed by edge_agent.evidence (its sentence, our source)."""
    try:
        return parse(block)
    except EvidenceError as exc:
        raise r.fail(name, f"is invalid: {str(exc).rstrip('.')}") from exc


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Reader:
    """Field access with one-sentence errors that name the field and the file."""

    def __init__(self, source: Path | str, *, config: bool = False):
        self.source = source
        self.config = config  # a site's [models.<name>] table, not a manifest

    def fail(self, field: str, problem: str) -> EdgeAgentError:
        if self.config:
            return ConfigError(f"{self.source}: '{field}' {problem}; fix the config (the keys are those of a "
                               "manifest's applies_to, see docs/MANIFEST.md).")
        return ManifestError(f"Manifest {self.source}: '{field}' {problem}; fix the manifest (see docs/MANIFEST.md).")

    def obj(self, value: Any, field: str, required: set[str], optional: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field, "must be a JSON object")
        unknown = sorted(set(value) - required - optional)
        if unknown:
            where = f"{field}.{unknown[0]}" if field else unknown[0]
            raise self.fail(where, "is not a known key")
        missing = sorted(required - set(value))
        if missing:
            where = f"{field}.{missing[0]}" if field else missing[0]
            raise self.fail(where, "is required but missing")
        return value

    def string(self, value: Any, field: str, *, pattern: re.Pattern | None = None, choices=None) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, "must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise self.fail(field, f"has an invalid value {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(field, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def strings(self, value: Any, field: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(field, "must be a list of non-empty strings")
        return tuple(v.strip().upper() for v in value)

    def number(self, value: Any, field: str, *, minimum: float | None = None, integer: bool = False) -> float:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            raise self.fail(field, f"must be {'an integer' if integer else 'a finite number'}, not {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(field, f"must be ≥ {minimum}, not {value!r}")
        return value

    def boolean(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, "must be true or false")
        return value


def _preprocessing(r: _Reader, d: Any) -> PreprocessSpec:
    d = r.obj(d, "preprocessing", {"windows", "size"}, {"pixel_spacing_mm", "dtype", "context"})
    _windows(r, d["windows"], "preprocessing.windows")
    size = d["size"]
    if not isinstance(size, list) or len(size) != 2:
        raise r.fail("preprocessing.size", "must be [rows, cols]")
    for i, v in enumerate(size):
        r.number(v, f"preprocessing.size[{i}]", minimum=1, integer=True)
    spacing = d.get("pixel_spacing_mm")
    if spacing is not None and r.number(spacing, "preprocessing.pixel_spacing_mm") <= 0:
        raise r.fail("preprocessing.pixel_spacing_mm", "must be > 0 or null")
    r.string(d.get("dtype", "float32"), "preprocessing.dtype", choices=("float32", "float16"))
    if "context" in d:
        context = r.obj(d["context"], "preprocessing.context", {"offset_mm", "windows"}, set())
        if r.number(context["offset_mm"], "preprocessing.context.offset_mm") <= 0:
            raise r.fail("preprocessing.context.offset_mm", "(the distance to each neighbour slice along the "
                                                            f"normal) must be > 0 mm, not {context['offset_mm']!r}")
        _windows(r, context["windows"], "preprocessing.context.windows")
    return PreprocessSpec.from_dict(d)


def _windows(r: _Reader, windows: Any, field: str) -> None:
    """A non-empty list of [centre, width] pairs in HU, width > 0."""
    if not isinstance(windows, list) or not windows or not all(isinstance(w, list) and len(w) == 2 for w in windows):
        raise r.fail(field, "must be a non-empty list of [centre, width] pairs in HU")
    for i, (c, w) in enumerate(windows):
        r.number(c, f"{field}[{i}][0]")
        if r.number(w, f"{field}[{i}][1]") <= 0:
            raise r.fail(f"{field}[{i}][1]", "(the window width) must be > 0")


def _tensors(r: _Reader, value: Any, field: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise r.fail(field, "must be a non-empty list of tensors")
    specs = []
    for i, t in enumerate(value):
        where = f"{field}[{i}]"
        t = r.obj(t, where, {"name", "shape", "dtype"}, set())
        shape = t["shape"]
        if not isinstance(shape, list) or not shape:
            raise r.fail(f"{where}.shape", "must be a non-empty list of dimensions (-1 = dynamic)")
        for j, dim in enumerate(shape):
            if r.number(dim, f"{where}.shape[{j}]", minimum=-1, integer=True) == 0:
                raise r.fail(f"{where}.shape[{j}]", "must be a positive size or -1 (dynamic)")
        specs.append(TensorSpec(r.string(t["name"], f"{where}.name"), tuple(int(v) for v in shape),
                                r.string(t["dtype"], f"{where}.dtype", choices=DTYPES)))
    if len({s.name for s in specs}) != len(specs):
        raise r.fail(field, "has two tensors with the same name")
    return tuple(specs)


def _decision(r: _Reader, d: Any) -> DecisionRule:
    d = r.obj(d, "decision", {"rule", "threshold"}, {"k", "preliminary", "key_slices", "slice_threshold"})
    r.string(d["rule"], "decision.rule", choices=RULES)
    prelim = d.get("preliminary")
    try:
        if prelim is not None:
            prelim = r.obj(prelim, "decision.preliminary", {"min_slices", "threshold"}, set())
            prelim = PreliminaryRule(
                min_slices=int(r.number(prelim["min_slices"], "decision.preliminary.min_slices", integer=True)),
                threshold=float(r.number(prelim["threshold"], "decision.preliminary.threshold")))
        return DecisionRule(
            rule=d["rule"],
            threshold=float(r.number(d["threshold"], "decision.threshold")),
            k=int(r.number(d.get("k", 1), "decision.k", integer=True)),
            preliminary=prelim,
            key_slices=int(r.number(d.get("key_slices", 3), "decision.key_slices", integer=True)),
            slice_threshold=(None if d.get("slice_threshold") is None
                             else float(r.number(d["slice_threshold"], "decision.slice_threshold"))),
        )
    except DecisionError as exc:
        raise ManifestError(f"Manifest {r.source}: {str(exc).rstrip('.')}; fix the manifest "
                            "(see docs/MANIFEST.md).") from None


def _artefacts(r: _Reader, d: Any, folder: Path, verify: bool) -> dict[str, Artefact]:
    if not isinstance(d, dict) or "onnx" not in d:
        raise r.fail("artefacts", "must be an object with at least an 'onnx' entry")
    out = {}
    root = folder.resolve()
    for key, a in d.items():
        where = f"artefacts.{key}"
        a = r.obj(a, where, {"path", "sha256"}, {"fingerprint"})
        paths = {}
        for sub in ("path", "fingerprint"):
            if sub not in a:
                continue
            rel = r.string(a[sub], f"{where}.{sub}")
            p = (folder / rel).resolve()
            if Path(rel).is_absolute() or (p != root and root not in p.parents):
                raise r.fail(f"{where}.{sub}", "must be a path inside the model folder")
            paths[sub] = p
        digest = r.string(a["sha256"], f"{where}.sha256", pattern=_SHA_RE)
        artefact = Artefact(path=paths["path"], sha256=digest, fingerprint=paths.get("fingerprint"))
        if verify:
            if not artefact.path.is_file():
                raise ManifestError(f"Model artefact {artefact.path} listed in {r.source} is missing; "
                                    "restore the model folder or fix 'artefacts'.")
            if sha256_file(artefact.path) != digest:
                raise ManifestError(f"Model artefact {artefact.path} does not match the sha256 in {r.source} "
                                    "(changed or corrupted); restore the original file, or update the manifest "
                                    "only if you deliberately replaced it.")
        out[key] = artefact
    return out


def _cross_checks(r: _Reader, m: Manifest) -> None:
    """Consistency between blocks: preprocessing ↔ inputs, findings ↔ outputs."""
    first = m.inputs[0]
    pp = m.preprocessing
    if len(first.shape) != 4:
        raise r.fail("inputs[0].shape", "must be [batch, channels, rows, cols]")
    expected = (pp.channels, *pp.size)  # channels: the slice's windows, with context two neighbours' too
    for axis, (have, want) in enumerate(zip(first.shape[1:], expected), start=1):
        if have != -1 and have != want:
            how = ""
            if axis == 1 and pp.context is not None:
                how = (f" channels ({len(pp.windows)} window{'s' if len(pp.windows) != 1 else ''} of the slice, "
                       f"then {len(pp.context.windows)} of the neighbour below and as many of the neighbour above, "
                       "preprocessing.context)")
            raise r.fail(f"inputs[0].shape[{axis}]", f"is {have} but preprocessing gives {want}{how}")
    if first.dtype != pp.dtype:
        raise r.fail("inputs[0].dtype", f"is {first.dtype} but preprocessing.dtype is {pp.dtype}")
    out = m.outputs[0]
    if len(out.shape) != 2 or out.shape[1] not in (-1, len(m.findings)):
        raise r.fail("outputs[0].shape", f"must be [batch, {len(m.findings)}] (one column per finding)")
    if len({f.code for f in m.findings}) != len(m.findings):
        raise r.fail("findings", "has two findings with the same code")


_NETWORK_KEYS = ("preprocessing", "inputs", "outputs", "artefacts")


def _plugin(r: _Reader, d: Any, n_findings: int) -> PluginSpec:
    """The manifest's ``plugin`` block: ``name`` of a registered plug-in, its parameters, ``alert_at``."""
    from edge_agent import plugins  # noqa: PLC0415 - plug-ins are imported only when a manifest names one

    if not isinstance(d, dict):
        raise r.fail("plugin", "must be a JSON object with at least a 'name'")
    if "name" not in d:
        raise r.fail("plugin.name", "is required but missing")
    name = r.string(d["name"], "plugin.name")
    if name not in plugins.PLUGINS:
        raise r.fail("plugin.name", f"names no known plug-in ({', '.join(plugins.names())}), not {name!r}")
    step = plugins.get(name)
    if step.findings != n_findings:
        raise r.fail("findings", f"must list {step.findings} finding{'s' if step.findings != 1 else ''}, as "
                                 f"the {name} plug-in reports")
    alert_at = d.get("alert_at")
    if alert_at is not None:
        alert_at = r.string(alert_at, "plugin.alert_at", choices=step.grades)
    params = step.parse({k: v for k, v in d.items() if k not in ("name", "alert_at")}, r.fail)
    return PluginSpec(name=name, params=params, alert_at=alert_at)


def _plugin_decision(r: _Reader, d: Any) -> DecisionRule:
    """A plug-in decides by measurement: its ``decision`` block may only say how many key slices to list."""
    d = r.obj({} if d is None else d, "decision", set(), {"key_slices"})
    return DecisionRule(rule="max", threshold=0.5,
                        key_slices=int(r.number(d.get("key_slices", 3), "decision.key_slices", minimum=0,
                                                integer=True)))


def parse_manifest(data: Any, folder: Path, *, source: Path | None = None, verify: bool = True) -> Manifest:
    """Validate a manifest already parsed from JSON (``folder`` resolves artefact paths)."""
    folder = Path(folder)
    r = _Reader(source or folder / MANIFEST_NAME)
    plugin = isinstance(data, dict) and "plugin" in data
    if plugin:
        for key in _NETWORK_KEYS + ("evidence", "domain"):
            if key in data:
                raise r.fail(key, "is not used by a plug-in model (its 'plugin' step replaces the network and "
                                  "checks its own domain); remove it")
        d = r.obj(data, "", {"schema", "name", "version", "findings", "applies_to", "plugin"},
                  {"description", "synthetic_training", "decision"})
    else:
        d = r.obj(data, "", {"schema", "name", "version", "findings", "applies_to", "preprocessing", "inputs",
                             "outputs", "decision", "artefacts"}, {"description", "synthetic_training", "evidence",
                                                                   "domain"})
    if d["schema"] != SCHEMA_VERSION:
        raise r.fail("schema", f"is {d['schema']!r} but this edge-agent reads schema {SCHEMA_VERSION}")
    findings = d["findings"]
    if not isinstance(findings, list) or not findings:
        raise r.fail("findings", "must be a non-empty list")
    specs = []
    for i, f in enumerate(findings):
        f = r.obj(f, f"findings[{i}]", {"code", "severity"}, {"label"})
        code = r.string(f["code"], f"findings[{i}].code", pattern=_NAME_RE)
        specs.append(FindingSpec(code=code, label=r.string(f.get("label", code), f"findings[{i}].label"),
                                 severity=r.string(f["severity"], f"findings[{i}].severity", choices=SEVERITIES)))
    common = dict(
        name=r.string(d["name"], "name", pattern=_NAME_RE),
        version=r.string(d["version"], "version"),
        description=r.string(d["description"], "description") if "description" in d else "",
        synthetic_training=r.boolean(d.get("synthetic_training", False), "synthetic_training"),
        findings=tuple(specs),
        applies_to=applies_to.parse(r, d["applies_to"]),
        folder=folder,
    )
    if plugin:
        if len({f.code for f in specs}) != len(specs):
            raise r.fail("findings", "has two findings with the same code")
        return Manifest(**common, preprocessing=None, inputs=(), outputs=(),
                        decision=_plugin_decision(r, d.get("decision")), artefacts={},
                        plugin=_plugin(r, d["plugin"], len(specs)))
    manifest = Manifest(
        **common,
        preprocessing=_preprocessing(r, d["preprocessing"]),
        inputs=_tensors(r, d["inputs"], "inputs"),
        outputs=_tensors(r, d["outputs"], "outputs"),
        decision=_decision(r, d["decision"]),
        artefacts=_artefacts(r, d["artefacts"], folder, verify),
        evidence=_checks(r, parse_evidence, d.get("evidence"), "evidence"),
        domain=_checks(r, parse_domain, d.get("domain"), "domain"),
    )
    _cross_checks(r, manifest)
    return manifest


def load_manifest(path_or_folder: str | Path, *, verify: bool = True) -> Manifest:
    """Read and validate ``manifest.json`` (or the one inside a model folder).

    ``verify=False`` skips checking the artefacts' presence and sha256
    (for ``inspect``); everything else is still validated.
    """
    path = Path(path_or_folder)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"No model manifest at {path}; a model folder must hold a {MANIFEST_NAME} "
                            "(see docs/MANIFEST.md).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"Cannot read the manifest {path} ({exc}); check the file and its permissions.") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"Manifest {path} is not valid JSON (line {exc.lineno}: {exc.msg}); "
                            "fix the file.") from None
    return parse_manifest(data, path.parent, source=path, verify=verify)


def add_artefact(path_or_folder: str | Path, key: str, file: str | Path,
                 fingerprint: str | Path | None = None) -> Manifest:
    """Record (or replace) artefact ``key`` in a manifest with the file's sha256 and rewrite it.

    Used by ``edge-agent convert`` to add the ``engine`` it built. ``file``
    (and ``fingerprint``) must lie inside the model folder. Returns the
    re-validated manifest.
    """
    path = Path(path_or_folder)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if load_manifest(path, verify=False).plugin is not None:  # refuse to edit an invalid manifest
        raise ManifestError(f"{path} describes a plug-in model (no network); it has no artefacts to add.")
    data = json.loads(path.read_text(encoding="utf-8"))
    folder = path.parent.resolve()
    file = Path(file).resolve()
    entry = {"path": _relative(file, folder, path), "sha256": sha256_file(file)}
    if fingerprint is not None:
        entry["fingerprint"] = _relative(Path(fingerprint).resolve(), folder, path)
    data["artefacts"][key] = entry
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return load_manifest(path, verify=False)


def _relative(file: Path, folder: Path, manifest: Path) -> str:
    try:
        return file.relative_to(folder).as_posix()
    except ValueError:
        raise ManifestError(f"{file} is outside the model folder of {manifest}; write it into {folder}.") from None


def override_applies_to(manifest: Manifest, changes: Any, source: str = "config") -> Manifest:
    """``manifest`` with a site's ``applies_to`` overrides (config ``[models.<name>.applies_to]``).

    Each key given replaces the manifest's key whole (a ``kernels`` table
    replaces the manifest's ``kernels``), validated exactly like a manifest;
    errors are one sentence (:class:`~edge_agent.errors.ConfigError`).
    """
    r = _Reader(source, config=True)
    field = f"models.{manifest.name}.applies_to"
    return replace(manifest, applies_to=applies_to.override(r, manifest.applies_to, changes, field))


def override_alert_at(manifest: Manifest, alert_at: str, source: str = "config") -> Manifest:
    """``manifest`` with a site's ``[models.<name>] alert_at``: the lowest grade of a graded plug-in finding
    (coronary calcium's category) that raises an alert; the finding is reported in results either way."""
    from edge_agent import plugins  # noqa: PLC0415 - plug-ins are imported only when a manifest names one

    r = _Reader(source, config=True)
    field = f"models.{manifest.name}.alert_at"
    if manifest.plugin is None:
        raise r.fail(field, f"is for graded plug-in findings; {manifest.name} is a network model, whose "
                            "alerts follow its decision rule")
    grades = plugins.get(manifest.plugin.name).grades
    value = r.string(alert_at, field, choices=grades)
    return replace(manifest, plugin=replace(manifest.plugin, alert_at=value))


def check_applies_to_override(name: str, changes: Any, source: str = "config") -> None:
    """Validate a site's ``[models.<name>.applies_to]`` table on its own (no manifest at hand)."""
    r = _Reader(source, config=True)
    field = f"models.{name}.applies_to"
    if not isinstance(changes, dict):
        raise r.fail(field, "must be a table of applies_to keys")
    applies_to.parse(r, {"modality": ["CT"], **changes}, field)
