"""The report's figures as PNG bytes (matplotlib, Agg backend: no display, no browser).

Each function takes plain data and returns one PNG, so the HTML page can inline it and the
CLI can save it beside the page.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless everywhere (workers, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from unlearning_core.report.gradcam import CamPanel  # noqa: E402
from unlearning_core.report.timeline import Axis  # noqa: E402

DPI = 110


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _display(image: torch.Tensor) -> np.ndarray:
    """A normalised C x H x W tensor as an H x W (gray) or H x W x 3 array in [0, 1]."""
    x = image.detach().float().cpu().numpy()
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    return x[0] if x.shape[0] == 1 else np.transpose(x[:3], (1, 2, 0))


def gradcam_grid(panel: CamPanel, class_names: Sequence[str] | None = None) -> bytes:
    """Rows: panel images; columns: the input, then each model's map over it."""
    n, cols = len(panel.labels), 1 + len(panel.columns)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n), squeeze=False)
    name = (lambda k: class_names[k]) if class_names else str
    for r in range(n):
        img = _display(panel.images[r])
        cmap = "gray" if img.ndim == 2 else None
        axes[r][0].imshow(img, cmap=cmap)
        axes[r][0].set_ylabel(f"class {name(panel.labels[r])}", fontsize=8)
        for c, column in enumerate(panel.columns, start=1):
            ax = axes[r][c]
            ax.imshow(img, cmap=cmap)
            ax.imshow(column.cams[r].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xlabel(
                f"pred {name(column.predictions[r])}, p={column.confidence[r]:.2f}", fontsize=7
            )
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("input", fontsize=9)
    for c, column in enumerate(panel.columns, start=1):
        axes[0][c].set_title(column.title, fontsize=9)
    fig.suptitle(f"Grad-CAM (HiResCAM weighting) for the true class, layer {panel.layer}; one scale per row", fontsize=9)
    return _png(fig)


def layer_distance_chart(series: Mapping[str, Mapping[str, Mapping[str, float]]]) -> bytes:
    """Per layer L2 distance to the original weights, one bar group per layer and one bar
    per labelled version (``{label: layer_distance}``, DESIGN.md's ``layer_distance``)."""
    layers: list[str] = []
    for dist in series.values():
        layers += [k for k in dist if k not in layers]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(layers) + 2), 3.2))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(layers))
    for i, (label, dist) in enumerate(series.items()):
        values = [dist.get(layer, {}).get("original", 0.0) for layer in layers]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("L2 distance to original")
    ax.set_title("Layer-wise distance to the original model", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def timeline_chart(axis: Axis, highlight: Sequence[int] = ()) -> bytes:
    """Test accuracy (overall, and per class; the forgotten classes drawn bold) on one step
    axis: training, a marker at each erasure, and the recovery segment after it."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    pts = sorted(axis.points, key=lambda p: p.x)
    xs = [p.x for p in pts]
    classes = sorted({k for p in pts for k in p.per_class_acc}, key=int)
    cmap = plt.get_cmap("tab10")
    for k in classes:
        ys = [p.per_class_acc.get(k) for p in pts]
        ys = [np.nan if y is None else y for y in ys]
        bold = int(k) in highlight
        ax.plot(xs, ys, color=cmap(int(k) % 10), lw=2.2 if bold else 0.8,
                alpha=1.0 if bold else 0.45, label=f"class {k}" + (" (forgotten)" if bold else ""))
    ax.plot(xs, [p.test_acc for p in pts], color="black", lw=2.0, ls="--", label="test accuracy")
    for e in axis.erasures:
        ax.axvline(e.x, color="red", lw=1.2, ls=":")
        ax.text(e.x, 1.02, f"v{e.version} {e.method}", color="red", fontsize=7, rotation=90,
                va="bottom", ha="center")
        if e.recovery_steps > 0:
            ax.axvspan(e.x, e.x + e.recovery_steps, color="green", alpha=0.08)
    if axis.training_steps:
        ax.axvspan(0, axis.training_steps, color="grey", alpha=0.05)
    ax.set_ylim(-0.02, 1.0)
    ax.set_xlabel("optimizer steps (training; erasures placed after it; green: recovery)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    ax.grid(alpha=0.3)
    return _png(fig)
