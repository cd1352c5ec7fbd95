"""``ovseg segment`` on Ray against the single process: images/s and the Ray path's overhead.

Runs, each in a fresh interpreter (``python -m ovseg segment ... --timings``) on the same
photos, in rounds with the order rotated so that every configuration sees the same machine
load:

- ``local 2t``: today's single process, 2 torch threads (``--engine local``);
- ``local 1t``: the single process with 1 thread (the per-image baseline of the overhead);
- ``ray 1x1``: ``--engine ray --workers 1 --threads-per-worker 1``;
- ``ray 2x1``: ``--engine ray --workers 2 --threads-per-worker 1``.

Per run: wall time of the command, seconds to the first image, steady images/s (images after
the first over the time from the first to the last: start-up excluded), and the model's own
seconds per image (``set_image_s + predict_s``). The Ray path's overhead per image is the
steady seconds per image of ``ray 1x1`` minus those of ``local 1t`` (same threads, same
model; it holds Ray Data's scheduling, the object store, the ledger call and the writes that
the local engine overlaps with the model), median over rounds of the per-round differences.

    python benchmarks/scale_out.py                        # ovseg-test-tiny, 24 photos, 2 rounds
    python benchmarks/scale_out.py --model ovseg-R101c-vitB16 --images 8 --rounds 1

Prints a markdown table, the load average around every run and the CPU flags, and writes
``benchmarks/results/scale_out.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "coco-mini" / "train2017"
CLASSES = "person, dog, cat, car, sky, grass, tree, building, road, table"
CONFIGS = {
    "local 2t": ["--engine", "local", "--threads-per-worker", "2"],
    "local 1t": ["--engine", "local", "--threads-per-worker", "1"],
    "ray 1x1": ["--engine", "ray", "--workers", "1", "--threads-per-worker", "1"],
    "ray 2x1": ["--engine", "ray", "--workers", "2", "--threads-per-worker", "1"],
}


def cpu_flags() -> str:
    """The CPU flags that decide the kernels (AVX2, AVX-512 BF16/VNNI, AMX)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("Flags")),
        [],
    )
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def load() -> float:
    return os.getloadavg()[0]


def run_once(name: str, photos: Path, work: Path, model: str, env: dict) -> dict:
    out, timings = work / f"out-{name.replace(' ', '-')}", work / "timings.json"
    argv = [sys.executable, "-m", "ovseg", "segment", str(photos), "--classes", CLASSES]
    argv += ["--model", model, "--out", str(out), "--force", "--timings", str(timings)]
    before = load()
    start = time.perf_counter()
    result = subprocess.run(argv + CONFIGS[name], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    record = json.loads(timings.read_text())
    images = sorted((r for r in record["images"] if "predict_s" in r), key=lambda r: r["t_s"])
    t = [r["t_s"] for r in images]
    steady = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else float("nan")
    model_s = statistics.mean(r["set_image_s"] + r["predict_s"] for r in images)
    parts = {  # Ray workers: where an item's time in the worker went
        key: statistics.mean(r[key] for r in images)
        for key in ("write_s", "ledger_s", "item_s")
        if all(key in r for r in images)
    }
    return {
        "config": name,
        "images": len(images),
        "wall_s": wall,
        "first_image_s": t[0],
        "steady_img_per_s": steady,
        "model_s_per_image": model_s,
        **{f"{key[:-2]}_s_per_image": value for key, value in parts.items()},
        "load_before": before,
        "load_after": load(),
        "workers": record.get("workers"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ovseg-test-tiny")
    parser.add_argument("--images", type=int, default=24, help="photos (coco-mini)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "scale_out.json"))
    args = parser.parse_args()
    sources = sorted(PHOTOS.glob("*.jpg"))[: args.images]
    if not sources:
        sys.exit(f"no photos in {PHOTOS}")
    work = Path(tempfile.mkdtemp(prefix="ovseg-scale-out-"))
    photos = work / "photos"
    photos.mkdir()
    for source in sources:
        (photos / source.name).symlink_to(source)
    env = dict(os.environ, OVSEG_HOME=str(work / "home"), PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    print(
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"flags: {cpu_flags()}"
    )
    print(
        f"model {args.model}, {len(sources)} photos, {args.rounds} round(s); warming the "
        "text-feature cache ...",
        flush=True,
    )
    run_once("local 2t", photos, work, args.model, env)  # text features to the disk cache
    names = list(CONFIGS)
    runs: list[dict] = []
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            result = run_once(name, photos, work, args.model, env) | {"round": r}
            runs.append(result)
            print(
                f"round {r} {name:9s} wall {result['wall_s']:6.1f} s, first image "
                f"{result['first_image_s']:5.1f} s, steady {result['steady_img_per_s']:.3f} "
                f"img/s, model {result['model_s_per_image']:.3f} s/img, load "
                f"{result['load_before']:.1f} -> {result['load_after']:.1f}",
                flush=True,
            )

    def per_round(name: str, key: str) -> dict[int, float]:
        return {x["round"]: x[key] for x in runs if x["config"] == name}

    base = per_round("local 2t", "steady_img_per_s")
    print(
        "\n| configuration | steady img/s | x local 2t (same round) | first image (s) | "
        "wall (s) | model s/img |"
    )
    print("|---|---|---|---|---|---|")
    summary = {}
    for name in names:
        rate = per_round(name, "steady_img_per_s")
        ratio = statistics.median(rate[r] / base[r] for r in rate)
        row = {
            "steady_img_per_s": statistics.median(rate.values()),
            "ratio_to_local_2t": ratio,
            "first_image_s": statistics.median(per_round(name, "first_image_s").values()),
            "wall_s": statistics.median(per_round(name, "wall_s").values()),
            "model_s_per_image": statistics.median(per_round(name, "model_s_per_image").values()),
        }
        summary[name] = row
        print(
            f"| {name} | {row['steady_img_per_s']:.3f} | {ratio:.2f}x | "
            f"{row['first_image_s']:.1f} | {row['wall_s']:.1f} | "
            f"{row['model_s_per_image']:.3f} |"
        )

    def rest(name: str) -> dict[int, float]:  # steady s/img that is not the model
        rate, model = per_round(name, "steady_img_per_s"), per_round(name, "model_s_per_image")
        return {r: 1 / rate[r] - model[r] for r in rate}

    one = [x for x in runs if x["config"] == "ray 1x1"]
    split = {
        "model": statistics.median(x["model_s_per_image"] for x in one),
        "write": statistics.median(x["write_s_per_image"] for x in one),
        "ledger": statistics.median(x["ledger_s_per_image"] for x in one),
        "between items": statistics.median(
            1 / x["steady_img_per_s"] - x["item_s_per_image"] for x in one
        ),
    }
    print("\nray 1x1, steady s/img by part: " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
    ray1, local1 = rest("ray 1x1"), rest("local 1t")
    overhead = statistics.median(ray1[r] - local1[r] for r in ray1)
    print(
        f"\nnot the model, steady s/img: ray 1x1 {statistics.median(ray1.values()):.3f}, "
        f"local 1t {statistics.median(local1.values()):.3f}; Ray path overhead per image: "
        f"{overhead:.3f} s"
    )
    loads = [x["load_before"] for x in runs] + [x["load_after"] for x in runs]
    print(f"load average (1 min) during the runs: {min(loads):.1f} .. {max(loads):.1f}")
    payload = {
        "model": args.model,
        "images": len(sources),
        "rounds": args.rounds,
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "summary": summary,
        "ray_overhead_s_per_image": overhead,
        "not_model_s_per_image": {"ray 1x1": ray1, "local 1t": local1},
        "ray_1x1_split_s_per_image": split,
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
