"""The report's figures as base64 PNG (matplotlib, Agg; imported only here, only when a report is written)."""

from __future__ import annotations

import base64
import io

import numpy as np

from edge_agent.errors import MissingDependency
from edge_agent.validation import metrics

POS_COLOUR = "#c0392b"
NEG_COLOUR = "#2c7fb8"


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415 - heavy, and only needed for report.html

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependency(f"Writing report.html needs matplotlib ({exc}); install it with "
                                "'pip install matplotlib' or run without --out.") from None
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def roc_png(scores: np.ndarray, labels: np.ndarray, threshold: float, suggested: float | None = None,
            title: str = "", manifest_point: tuple[float, float] | None = None) -> str | None:
    """ROC curve with the operating point at the manifest's decision (and at the suggested threshold).

    ``manifest_point`` (fpr, tpr): the model's own calls, which may add checks
    to "probability ≥ threshold" (an evidence check); default: computed from the scores.
    """
    if labels.all() or not labels.any():
        return None
    plt = _pyplot()
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, ls="--", label="chance")
    ax.plot(fpr, tpr, color="#222222", lw=2, drawstyle="default", label="ROC")
    for t, style, name in ((threshold, "o", "manifest threshold"), (suggested, "s", "suggested threshold")):
        if t is None:
            continue
        op = metrics.operating_point(scores, labels, t)
        x, y = 1 - (op.specificity or 0.0), op.sensitivity or 0.0
        if style == "o" and manifest_point is not None:
            x, y = manifest_point
        ax.plot(x, y, style, ms=9, mfc="none", mew=2,
                color=POS_COLOUR if style == "o" else "#27ae60", label=f"{name} {t:g}")
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _png(fig)


def histogram_png(scores: np.ndarray, labels: np.ndarray, threshold: float, suggested: float | None = None) -> str:
    """Score histograms of positive and negative series, with the threshold line(s)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    bins = np.linspace(0.0, 1.0, 26)
    ax.hist(scores[~labels], bins=bins, alpha=0.65, color=NEG_COLOUR, label=f"negative (n={int((~labels).sum())})")
    ax.hist(scores[labels], bins=bins, alpha=0.65, color=POS_COLOUR, label=f"positive (n={int(labels.sum())})")
    ax.axvline(threshold, color="#222222", lw=2, label=f"manifest threshold {threshold:g}")
    if suggested is not None:
        ax.axvline(suggested, color="#27ae60", lw=2, ls="--", label=f"suggested {suggested:g} (not applied)")
    ax.set_xlabel("series probability (the decision rule's output)")
    ax.set_ylabel("series")
    ax.set_xlim(0, 1)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def thumbnail_png(image: np.ndarray) -> str:
    """A uint8 greyscale key slice as PNG (written through matplotlib's image writer)."""
    plt = _pyplot()
    buf = io.BytesIO()
    plt.imsave(buf, image, cmap="gray", vmin=0, vmax=255, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")
