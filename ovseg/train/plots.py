"""Training curves as PNG: ``python -m ovseg.train.plots RUN_DIR OUT.png [--title T]``.

Left: the logged losses (``train_log.csv``) against optimizer steps. Right, when the run
has one: the validation metrics (``eval_log.csv``). Needs matplotlib (``ovseg[plot]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ovseg.train.logs import read_csv

SKIP = {"step", "epoch", "lr", "samples_per_s", "images"}


def plot_run(run_dir: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Write the curves of the run in ``run_dir`` to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, out = Path(run_dir), Path(out)
    train = read_csv(run_dir / "train_log.csv")
    if not train:
        raise ValueError(f"{run_dir / 'train_log.csv'} has no rows yet")
    evals = read_csv(run_dir / "eval_log.csv") if (run_dir / "eval_log.csv").is_file() else []
    evals = [r for r in evals if len(r) > 1]
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 6.5, 4.2))
    axes = list(axes) if evals else [axes]
    steps = [r["step"] for r in train]
    losses = [k for k in train[0] if k not in SKIP and k.startswith("loss")]
    others = [k for k in train[0] if k not in SKIP and not k.startswith("loss")]
    for key in losses:
        axes[0].plot(steps, [r.get(key) for r in train], label=key)
    if len(losses) > 1:
        axes[0].set_yscale("log")
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("loss")
    axes[0].set_title("training (logged window means)")
    axes[0].grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if others:  # e.g. training accuracy, on its own axis
        twin = axes[0].twinx()
        for key in others:
            twin.plot(steps, [r.get(key) for r in train], ":", color="gray", label=key)
        twin.set_ylabel(", ".join(others))
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    axes[0].legend(handles, labels, fontsize=8)
    if evals:
        es = [r["step"] for r in evals]
        for key in [k for k in evals[0] if k not in SKIP]:
            axes[1].plot(es, [r.get(key) for r in evals], marker="o", label=key)
        axes[1].set_xlabel("optimizer step")
        axes[1].set_ylabel("%")
        axes[1].set_title("validation")
        axes[1].legend(fontsize=8)
        axes[1].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
