"""The device checks of round five, in one process: ceilings, the official fixture in fp32
with TF32 off and on, and fp16 mixed-precision training steps.

    PYTHONPATH=. python benchmarks/gpu_check.py --fixture ../shared/fixtures/official-tiny \\
        --json out.json [--device cuda] [--steps 40]

- ``ceilings``: matmul FLOP/s (8192^3, CUDA events, median of 10) in bf16, fp16, fp32 with
  TF32 off and on; device-to-device copy bandwidth (bytes read + written).
- ``fixture``: ``official-tiny`` (the official OVSeg run, fp32) through ``Predictor`` with
  ``tf32=False`` (the default: IEEE fp32 inside ovseg's calls) and ``tf32=True`` (the
  process's own setting, PyTorch's default: TF32 convolutions), and ``OVSeg.forward``: argmax
  agreement with the official label map, max abs difference of ``sem_seg``.
- ``amp``: the proposal model (``ovseg-test-tiny``) trained ``--steps`` steps on one
  synthetic batch with ``torch.amp.GradScaler`` + autocast in fp16, and in bf16 and fp32:
  the loss per step, the scale per step, the steps the scaler skipped (inf/NaN gradients).

Runs on a CPU too (fp16 autocast there, small sizes), which is how it is tested before a
device is lent.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ovseg  # noqa: E402
from ovseg.inference.options import InferenceOptions  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int = 10) -> float:
    """Median seconds of ``fn`` (CUDA events on a GPU) after two warm-up calls."""
    times = []
    for i in range(repeats + 2):
        sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t
        if i >= 2:
            times.append(seconds)
    return statistics.median(times)


def ceilings(device: torch.device) -> dict:
    n = 8192 if device.type == "cuda" else 512
    out = {"matmul_n": n}
    for name, dtype, tf32 in (
        ("bf16", torch.bfloat16, False),
        ("fp16", torch.float16, False),
        ("fp32_ieee", torch.float32, False),
        ("fp32_tf32", torch.float32, True),
    ):
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            out[f"matmul_{name}_flops_per_s"] = 2 * n**3 / timed(lambda: a @ b, device)  # noqa: B023
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    size = 2**30 if device.type == "cuda" else 2**24
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    out["copy_bytes_per_s"] = 2 * size / timed(lambda: dst.copy_(src), device)
    return out


def fixture_check(folder: Path, device: torch.device) -> dict:
    from PIL import Image
    from safetensors.torch import load_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ovseg.load_official(folder / "config.yaml", folder / "model_state.safetensors")
    model = model.to(device).eval()
    outputs = load_file(str(folder / "outputs.safetensors"))
    image = np.array(Image.open(folder / "input.png").convert("RGB"))
    names = json.loads((folder / "meta.json").read_text())["class_names"]
    expected, expected_argmax = outputs["sem_seg"], outputs["sem_seg_argmax"]
    result = {
        "tf32_process_default": {
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    }
    for tf32 in (False, True):
        predictor = ovseg.Predictor(
            copy.deepcopy(model), options=InferenceOptions(tf32=tf32, text_cache=False)
        )
        predictor.set_model_input(image, image.shape[:2])
        seg = predictor.predict(names)
        label = torch.from_numpy(seg.label_map)
        result[f"predictor_tf32_{tf32}"] = {
            "argmax_agreement": float((label == expected_argmax).float().mean()),
            "max_abs": float((seg.sem_seg.float() - expected).abs().max()),
        }
    with torch.no_grad():
        scores = model(torch.from_numpy(image).permute(2, 0, 1).to(device), names).cpu()
    result["forward"] = {
        "argmax_agreement": float((scores.argmax(0) == expected_argmax).float().mean()),
        "max_abs": float((scores - expected).abs().max()),
    }
    return result


def amp_check(device: torch.device, steps: int) -> dict:
    """The tiny proposal model trained on one synthetic batch, per precision."""
    from ovseg.train.criterion import SetCriterion
    from ovseg.train.matcher import HungarianMatcher
    from ovseg.train.proposal_training import ProposalTrainModule, freeze_for_proposals

    out = {}
    for precision in ("fp16", "bf16", "fp32"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ovseg.build_model("ovseg-test-tiny").to(device)
        freeze_for_proposals(model)
        model.train()
        classes = 5
        g = torch.Generator().manual_seed(1)
        text = torch.nn.functional.normalize(
            torch.randn(classes, model.config.clip.embed_dim, generator=g), dim=-1
        ).to(device)
        weights = {"loss_ce": 2.0, "loss_mask": 20.0, "loss_dice": 1.0}
        criterion = SetCriterion(classes, HungarianMatcher(2.0, 20.0, 1.0), weights=weights)
        module = ProposalTrainModule(model, text, criterion).to(device)
        targets = []
        for _ in range(2):
            label = torch.randint(0, classes, (4, 4), generator=g).repeat_interleave(16, 0)
            label = label.repeat_interleave(16, 1)
            present = label.unique()
            masks = (label[None] == present[:, None, None]).float()
            targets.append({"labels": present.to(device), "masks": masks.to(device)})
        image = torch.randint(0, 256, (2, 3, 64, 64), generator=g).float().to(device)
        batch = {"image": image, "targets": targets}
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        losses, scales, skipped = [], [], 0
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                loss, _ = module(batch)
            scaler.scale(loss).backward()
            before = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.step(optimizer)
            scaler.update()
            after = scaler.get_scale() if scaler.is_enabled() else 1.0
            skipped += after < before
            losses.append(loss.item())
            scales.append(after)
        out[precision] = {
            "skipped_steps": int(skipped),
            "final_scale": scales[-1],
            "scales": scales,
            "losses": losses,
        }
        print(precision, json.dumps({k: v for k, v in out[precision].items() if k != "losses"}))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", required=True, help="the official-tiny fixture folder")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=40, help="training steps per precision")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    result = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name()
        result["cudnn"] = torch.backends.cudnn.version()
    for name, fn in (
        ("fixture", lambda: fixture_check(Path(args.fixture), device)),
        ("amp", lambda: amp_check(device, args.steps)),
        ("ceilings", lambda: ceilings(device)),
    ):
        t = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as error:  # noqa: BLE001 - report and go on with the next check
            result[name] = {"error": f"{type(error).__name__}: {error}"}
        result[f"{name}_s"] = time.perf_counter() - t
        print(name, json.dumps(result[name])[:2000], flush=True)
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
