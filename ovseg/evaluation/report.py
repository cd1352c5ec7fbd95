"""Presenting evaluation results: a terminal table, JSON, and a per-class IoU bar chart."""

from __future__ import annotations

import io
import json
import os

from ovseg.fileio import write_atomic

SUMMARY_KEYS = (
    "mIoU",
    "fwIoU",
    "mACC",
    "pACC",
    "mIoU-seen",
    "mIoU-unseen",
    "pACC-seen",
    "pACC-unseen",
    "hIoU",
)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_table(metrics: dict, title: str = "", per_class: bool = True) -> str:
    """A plain-text table: summary metrics, then per-class IoU / accuracy (GT classes only)."""
    lines = [title] if title else []
    summary = [(key, metrics[key]) for key in SUMMARY_KEYS if key in metrics]
    width = max(len(key) for key, _ in summary)
    lines += [f"  {key:<{width}}  {_fmt(value):>7}" for key, value in summary]
    if per_class:
        ious, accs = metrics["per_class_iou"], metrics.get("per_class_acc", {})
        rows = [(name, iou, accs.get(name)) for name, iou in ious.items() if iou is not None]
        if rows:
            name_width = min(40, max(len(name) for name, _, _ in rows))
            lines.append("")
            lines.append(f"  {'class':<{name_width}}  {'IoU':>7}  {'Acc':>7}")
            for name, iou, acc in rows:
                short = name if len(name) <= name_width else name[: name_width - 3] + "..."
                lines.append(f"  {short:<{name_width}}  {_fmt(iou):>7}  {_fmt(acc):>7}")
        missing = sum(1 for iou in ious.values() if iou is None)
        if missing:
            lines.append(f"  ({missing} classes absent from the ground truth are not listed)")
    return "\n".join(lines)


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Metrics as JSON (NaN is written as null), atomically."""
    write_atomic(path, (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())


def save_bar_chart(metrics: dict, path: str | os.PathLike, title: str = "") -> None:
    """Horizontal bar chart of the per-class IoU of the classes present in the GT, sorted.

    Needs matplotlib (the ``plot`` extra). Written atomically as PNG.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RuntimeError(
            "the per-class chart needs matplotlib: pip install 'ovseg[plot]'"
        ) from error
    rows = sorted(
        ((name, iou) for name, iou in metrics["per_class_iou"].items() if iou is not None),
        key=lambda row: row[1],
    )
    if not rows:
        raise ValueError("no class is present in the ground truth; nothing to plot")
    names = [name if len(name) <= 40 else name[:37] + "..." for name, _ in rows]
    height = max(2.5, 0.16 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height))
    ax.barh(range(len(rows)), [iou for _, iou in rows], color="#4c72b0")
    ax.set_yticks(range(len(rows)), names, fontsize=6 if len(rows) > 40 else 8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    mean = metrics.get("mIoU")
    if mean is not None:
        ax.axvline(mean, color="#c44e52", linestyle="--", linewidth=1, label=f"mIoU {mean:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "per-class IoU")
    ax.margins(y=0.005)
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    write_atomic(path, buffer.getvalue())
