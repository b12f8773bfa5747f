"""`edge-agent bench` on a 2.5-D model: inputs of ``spec.channels`` channels, no GPU-kernel rows (CPU input)."""

from __future__ import annotations

import json

from cli_helpers import run_cli  # noqa: E402
from edge_agent.testing.models import write_context_model  # noqa: E402


def test_bench_feeds_a_context_model_its_three_channels(capsys, tmp_path):
    folder = write_context_model(tmp_path / "ctx")
    code, out, err = run_cli(capsys, "bench", "--model", str(folder), "--backend", "onnxrt", "--slices", "4",
                             "--repeat", "2", "--warmup", "0", "--threads", "1", "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    cpu = next(r for r in rows if r.get("backend") == "onnxruntime cpu")
    assert "unavailable" not in cpu and cpu["batch"] == 4 and cpu["series_p50_ms"] > 0
    pre = {r["path"]: r for r in rows if r["stage"] == "preprocess"}
    assert pre["cpu reference (HU → input)"]["p50_ms"] > 0
    for path in ("cpu raw → input (kernel mirror)", "gpu kernel"):
        assert pre[path]["unavailable"] == ("the model needs neighbour slices (preprocessing.context): its input "
                                            "is prepared on the CPU")
