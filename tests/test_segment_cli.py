"""``ovseg segment`` on real photos: files written, RLE masks == label map, reruns skip."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from ovseg.cli import main
from ovseg.inference import auto
from ovseg.inference.spec import PredictorSpec
from tests.serve_helpers import FakePredictor

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini" / "train2017"


def _photos(n: int) -> list[Path]:
    if not COCO.is_dir():
        pytest.skip(f"real photos not found at {COCO} (the shared data folder is absent)")
    return sorted(COCO.glob("*.jpg"))[:n]


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    a, b, c = _photos(3)
    os.symlink(a, folder / a.name)
    os.symlink(b, folder / b.name)
    os.symlink(c, folder / "sub" / c.name)
    return folder


def _check_outputs(out: Path, image: Path, class_names: list[str]) -> None:
    stem = image.stem
    labels = np.asarray(Image.open(out / f"{stem}.png"))
    with Image.open(image) as photo:
        assert labels.shape == (photo.height, photo.width)
    overlay = Image.open(out / f"{stem}_overlay.png")
    assert overlay.height == labels.shape[0] and overlay.width > labels.shape[1]  # + legend
    record = json.loads((out / f"{stem}.json").read_text())
    assert record["class_names"] == class_names
    assert (record["height"], record["width"]) == labels.shape
    assert record["source"].endswith(image.name)
    unlabelled = labels == record["unlabelled"]["value"]
    assert record["unlabelled"]["area"] == int(unlabelled.sum())
    assert sorted(s["id"] for s in record["segments"]) == np.unique(labels[~unlabelled]).tolist()
    covered = unlabelled.astype(int)
    for segment in record["segments"]:
        rle = dict(segment["rle"], counts=segment["rle"]["counts"].encode())
        mask = mask_utils.decode(rle).astype(bool)
        assert np.array_equal(mask, labels == segment["id"]), segment["label"]
        assert segment["area"] == int(mask.sum())
        assert segment["label"] == class_names[segment["id"]]
        assert 0.0 <= segment["score"] <= 1.0
        covered += mask
    assert (covered == 1).all()  # the segments and the unlabelled pixels tile the image


def test_segment_real_photos_with_tiny_model(photo_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["segment", str(photo_dir), "--classes", "person, dog; sky", "--out", str(out)]
    argv += ["--model", "ovseg-test-tiny"]
    assert main(argv) == 0
    images = sorted(photo_dir.rglob("*.jpg"))
    for image in images:
        folder = out / "photos" / image.parent.relative_to(photo_dir)
        _check_outputs(folder, image, ["person", "dog", "sky"])
        record = json.loads((folder / f"{image.stem}.json").read_text())
        assert record["mode"] == "demo" and record["options"]["predict"] == {"mode": "demo"}
        assert record["options"]["model"] == {
            "name": "ovseg-test-tiny",
            "weights_sha256": "seeded-random",
        }
    assert "3 segmented, 0 already done, 0 failed" in capsys.readouterr().out

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(argv) == 0  # rerun: nothing to do, nothing rewritten
    assert "all 3 image(s) already done" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.fixture
def fake(monkeypatch) -> FakePredictor:
    predictor = FakePredictor()
    monkeypatch.setattr(PredictorSpec, "build", lambda spec: predictor)
    return predictor


def test_single_files_resume_force_and_new_vocabulary(fake, tmp_path, capsys):
    a, b = _photos(2)
    out = tmp_path / "out"
    assert (
        main(["segment", "--model", "m", str(a), "--classes", "dark, bright", "--out", str(out)])
        == 0
    )
    _check_outputs(out, a, ["dark", "bright"])
    assert fake.calls == 1

    # b is new, a is done: only b runs
    assert (
        main(
            [
                "segment",
                "--model",
                "m",
                str(a),
                str(b),
                "--classes",
                "dark, bright",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert fake.calls == 2
    assert "1 segmented, 1 already done" in capsys.readouterr().out
    _check_outputs(out, b, ["dark", "bright"])

    argv = [
        "segment",
        "--model",
        "m",
        str(a),
        str(b),
        "--classes",
        "dark, bright",
        "--out",
        str(out),
        "--force",
    ]
    assert main(argv) == 0
    assert fake.calls == 4

    # another vocabulary is not "done", nor are other options
    assert main(["segment", "--model", "m", str(a), "--classes", "x; y; z", "--out", str(out)]) == 0
    assert fake.calls == 5
    _check_outputs(out, a, ["x", "y", "z"])
    argv = [
        "segment",
        "--model",
        "m",
        str(a),
        "--classes",
        "x; y; z",
        "--out",
        str(out),
        "--mode",
        "eval",
    ]
    assert main(argv) == 0
    assert fake.calls == 6


def test_a_rerun_redoes_what_changed_and_names_it(fake, tmp_path, capsys):
    """Another model, other weights, other proposals, TTA, dtype or top-k: each rerun into
    the same folder redoes the image and says which recorded keys differ."""
    (a,) = _photos(1)
    out = tmp_path / "out"
    base = ["segment", str(a), "--classes", "dark, bright", "--out", str(out)]
    tiny = base + ["--model", "ovseg-test-tiny"]
    assert main(tiny) == 0 and fake.calls == 1
    assert main(tiny) == 0 and fake.calls == 1  # same everything: done
    assert "already done" in capsys.readouterr().out
    reruns = [
        (tiny + ["--proposals", "superpixels"], "proposals.name"),
        (tiny + ["--proposals", "superpixels", "--superpixel-scales", "50"], "proposals.options"),
        (tiny + ["--tta"], "inference.tta"),
        (tiny + ["--tta", "--sliding-window"], "inference.sliding_window"),
        (tiny + ["--dtype", "bf16"], "inference.dtype"),
        (tiny + ["--top-k", "5"], "inference.top_k"),
        (tiny + ["--templates", "imagenet"], "predict.templates"),
        (base + ["--model", "ovseg-R101c-vitB16"], "model.name"),
    ]
    for calls, (argv, key) in enumerate(reruns, start=2):
        assert main(argv) == 0, argv
        assert fake.calls == calls, f"{argv} kept the old output"
        assert key in capsys.readouterr().err, argv
        assert main(argv) == 0 and fake.calls == calls  # and now it is done

    # the same checkpoint path with other contents: the weights digest differs
    checkpoint = tmp_path / "w.safetensors"
    checkpoint.write_bytes(b"first weights")
    argv = base + ["--model", "ovseg-test-tiny", "--checkpoint", str(checkpoint)]
    assert main(argv) == 0 and fake.calls == len(reruns) + 2
    record = json.loads((out / f"{a.stem}.json").read_text())["options"]
    assert record["model"]["weights_sha256"] == hashlib.sha256(b"first weights").hexdigest()
    checkpoint.write_bytes(b"other weights")
    capsys.readouterr()
    assert main(argv) == 0 and fake.calls == len(reruns) + 3
    assert "model.weights_sha256" in capsys.readouterr().err


def test_classes_file_keeps_commas_inside_names(fake, tmp_path):
    (a,) = _photos(1)
    vocab = tmp_path / "classes.txt"
    vocab.write_text("# ADE-style names\nbuilding, edifice\n\nsky\n")
    out = tmp_path / "out"
    assert (
        main(["segment", "--model", "m", str(a), "--classes-file", str(vocab), "--out", str(out)])
        == 0
    )
    assert json.loads((out / f"{a.stem}.json").read_text())["class_names"] == [
        "building, edifice",
        "sky",
    ]


def test_bad_image_in_a_folder_is_reported_and_the_rest_done(fake, tmp_path, capsys):
    (a,) = _photos(1)
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(a, folder / a.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert (
        main(["segment", "--model", "m", str(folder), "--classes", "a, b", "--out", str(out)]) == 1
    )
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "1 segmented, 0 already done, 1 failed" in captured.out
    assert (out / "in" / f"{a.stem}.json").is_file()
    assert not (out / "in" / "broken.json").exists()


def test_usage_errors(fake, tmp_path, capsys):
    (a,) = _photos(1)
    assert (
        main(["segment", "--model", "m", str(a), "--classes", " , ;", "--out", str(tmp_path)]) == 2
    )
    assert "empty vocabulary" in capsys.readouterr().err
    assert (
        main(
            ["segment", "--model", "m", str(tmp_path / "nope.jpg"), "--classes", "a", "--out", "x"]
        )
        == 2
    )
    assert "no such image or folder" in capsys.readouterr().err
    twin = tmp_path / "twin"
    twin.mkdir()
    os.symlink(a, twin / a.name)
    assert (
        main(
            ["segment", "--model", "m", str(a), str(twin / a.name), "--classes", "a", "--out", "o"]
        )
        == 2
    )
    assert "would both write" in capsys.readouterr().err
    assert fake.calls == 0


def test_missing_released_weights_say_how_to_get_them(tmp_path, monkeypatch, capsys):
    (a,) = _photos(1)
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "empty-cache"))
    argv = ["segment", str(a), "--classes", "a", "--model", "ovseg-R101c-vitB16"]
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ovseg download ovseg-R101c-vitB16" in err and "--checkpoint" in err


def test_serve_binds_localhost_by_default():
    from ovseg.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "ovseg-test-tiny"])
    assert args.host == "127.0.0.1" and args.port == 8000


def test_serve_and_eval_prediction_flags():
    from ovseg.cli import build_parser
    from ovseg.cli._eval_run import eval_predict_kwargs
    from ovseg.cli._spec import predictor_spec

    parse = build_parser().parse_args
    assert predictor_spec(parse(["serve", "--model", "m"])).predict_kwargs() == {"mode": "demo"}
    args = parse(["serve", "--model", "m", "--mode", "eval", "--templates", "vild", "--top-k", "7"])
    spec = predictor_spec(args)
    assert spec.predict_kwargs() == {"mode": "eval", "templates": "vild"}
    assert spec.options.top_k == 7 and spec.model.model == "m"
    argv = ["eval", "--dataset", "camvid", "--root", "r", "--model", "m"]
    assert eval_predict_kwargs(parse(argv)) == {"mode": "eval", "clip_only": None}
    args = parse(argv + ["--clip-only", "--templates", "imagenet", "--no-clip-ensemble"])
    assert eval_predict_kwargs(args) == {
        "mode": "eval",
        "clip_only": True,
        "clip_ensemble": False,
        "templates": "imagenet",
    }


def test_segment_speed_knobs_bf16_and_top_k(tmp_path, capsys):
    image = _photos(1)[0]
    out = tmp_path / "out"
    argv = ["segment", str(image), "--classes", "person, dog, sky", "--out", str(out)]
    argv += ["--model", "ovseg-test-tiny", "--dtype", "bf16", "--top-k", "3"]
    assert main(argv) == 0
    _check_outputs(out, image, ["person", "dog", "sky"])
    base = ["segment", str(image), "--classes", "a", "--model", "ovseg-test-tiny"]
    with pytest.raises(SystemExit):
        main([*base, "--dtype", "float16"])
    # fp16 is a CUDA path: refused on the CPU, naming what to use instead
    assert main([*base, "--dtype", "fp16", "--out", str(tmp_path / "fp16")]) == 2
    assert "CUDA only" in capsys.readouterr().err


def test_segment_flags_reach_the_predictor(fake, tmp_path):
    """Every prediction flag ends up in the ``predict`` call (the library tests show what
    each one does)."""
    (a,) = _photos(1)
    argv = ["segment", "--model", "m", str(a), "--classes", "a, b", "--out", str(tmp_path / "1")]
    assert main(argv) == 0
    assert fake.options == {"mode": "demo"}  # the official demo by default
    argv = ["segment", "--model", "m", str(a), "--classes", "a, b", "--out", str(tmp_path / "2")]
    argv += ["--mode", "eval", "--ensemble-weight", "0.3", "--mask-threshold", "0.6"]
    argv += ["--clip-only", "--templates", "imagenet"]
    assert main(argv) == 0
    assert fake.options == {
        "mode": "eval",
        "ensemble_weight": 0.3,
        "mask_threshold": 0.6,
        "clip_only": True,
        "templates": "imagenet",
    }
    argv = ["segment", "--model", "m", str(a), "--classes", "a", "--out", str(tmp_path / "3")]
    assert main(argv + ["--no-clip-ensemble"]) == 0
    assert fake.options == {"mode": "demo", "clip_ensemble": False}


def test_speed_flags_build_the_inference_options(monkeypatch):
    from ovseg.cli import _spec, build_parser
    from ovseg.inference.spec import ModelSource

    args = build_parser().parse_args(
        ["segment", "x.jpg", "--classes", "a", "--dtype", "bf16", "--top-k", "5", "--model", "m"]
    )
    options = _spec.inference_options(args)
    assert (options.dtype, options.top_k) == ("bf16", 5)
    default = _spec.inference_options(build_parser().parse_args(["segment", "x", "--classes", "a"]))
    assert (default.dtype, default.top_k) == ("fp32", None)
    # the spec hands them to the Predictor it builds
    import ovseg

    tiny = ovseg.build_model("ovseg-test-tiny")
    monkeypatch.setattr(ModelSource, "load", lambda source: tiny)
    predictor = _spec.predictor_spec(args).build()
    assert predictor.options.top_k == 5
    assert predictor.model.backbone.patch_embed.proj.weight.dtype == torch.bfloat16
    assert predictor.model.clip_adapter.text_precision == "fp32"  # --text-dtype's default
    argv = ["segment", "x", "--classes", "a", "--text-dtype", "int8", "--model", "m"]
    tiny = ovseg.build_model("ovseg-test-tiny")
    predictor = _spec.predictor_spec(build_parser().parse_args(argv)).build()
    assert predictor.options.text_dtype == "int8" and predictor.options.dtype == "fp32"
    assert predictor.model.clip_adapter.text_precision == "int8"


def test_segment_tta_options_reach_the_predictor(tmp_path):
    from ovseg.cli import build_parser
    from ovseg.cli._spec import predictor_spec

    def make_predictor(args):
        return predictor_spec(args).build()

    base = ["segment", "x.jpg", "--classes", "a", "--model", "ovseg-test-tiny"]
    parse = build_parser().parse_args
    with pytest.warns(UserWarning, match="random weights"):
        plan = make_predictor(parse([*base, "--tta-sizes", "64,96", "--no-tta-flip"])).augmentation
    assert plan.min_sizes == (64, 96) and plan.flip is False and plan.max_size == 3584
    with pytest.warns(UserWarning, match="random weights"):
        plan = make_predictor(parse([*base, "--tta", "--sliding-window"])).augmentation
    assert plan.min_sizes == (256, 384, 512, 640, 768, 896) and plan.flip and plan.sliding_window
    with pytest.warns(UserWarning, match="random weights"):
        assert make_predictor(parse(base)).augmentation is None
    with pytest.raises(SystemExit):
        parse([*base, "--tta", "--no-tta"])
    image = _photos(1)[0]
    out = tmp_path / "out"
    argv = [
        *base[:1],
        str(image),
        *base[2:],
        "--out",
        str(out),
        "--tta-sizes",
        "64",
        "--no-tta-flip",
        "--mode",
        "eval",  # the official TTA is an evaluation feature
    ]
    assert main(argv) == 0
    _check_outputs(out, image, ["a"])


def test_second_run_takes_text_features_from_the_disk_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    image = _photos(1)[0]
    argv = ["segment", str(image), "--classes", "person, dog, sky", "--model", "ovseg-test-tiny"]
    argv += ["--dtype", "int8", "--force", "--out", str(tmp_path / "out")]
    sources = []
    for run in range(2):
        timings = tmp_path / f"timings{run}.json"
        capsys.readouterr()
        assert main(argv + ["--timings", str(timings)]) == 0
        text = json.loads(timings.read_text())["images"][0]["text"]
        # the text tower stays fp32 with --dtype int8 (--text-dtype's default)
        assert text["precision"] == "fp32" and text["classes"] == 3
        assert f"text features for 3 classes x 14 templates (fp32): {text['source']}" in (
            capsys.readouterr().err
        )
        sources.append(text["source"])
        # start-up split: process start -> parsing, then read / build / prepare, then image
        t = json.loads(timings.read_text())
        first = t["images"][0]
        assert t["import_s"] > 0 and t["weights_read_s"] == 0.0  # no checkpoint file here
        assert t["prepare_s"] > 0 and t["model_build_s"] >= 0  # int8: the quantisation
        assert t["start_to_model_s"] >= t["prepare_s"]
        # what ran and why: the CPU flags dtype auto reads, and the path
        assert t["chosen"] == "int8/fbgemm" and t["requested"] == "int8"
        assert set(t["cpu_capabilities"]) <= set(auto.KNOWN)
        before_first = t["import_s"] + t["start_to_model_s"] + first["set_image_s"]
        assert t["process_to_first_result_s"] >= before_first + first["predict_s"] - 0.02
    assert sources == ["computed", "disk"]
    _check_outputs(tmp_path / "out", image, ["person", "dog", "sky"])


def test_batch_size_writes_what_one_at_a_time_writes(photo_dir, tmp_path, capsys):
    """``--batch-size 2`` over three photos (a batch of two, then one): the same label maps
    and segments as one image at a time, scores equal up to float rounding."""
    base = ["segment", str(photo_dir), "--classes", "person, dog; sky", "--model"]
    base += ["ovseg-test-tiny", "--mode", "eval"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*base, "--out", str(one)]) == 0
    timings = tmp_path / "t.json"
    assert main([*base, "--out", str(two), "--batch-size", "2", "--timings", str(timings)]) == 0
    assert [r["batch"] for r in json.loads(timings.read_text())["images"]] == [2, 2, 1]
    images = sorted(photo_dir.rglob("*.jpg"))
    for image in images:
        rel = Path("photos") / image.parent.relative_to(photo_dir)
        _check_outputs(two / rel, image, ["person", "dog", "sky"])
        a = np.asarray(Image.open(one / rel / f"{image.stem}.png"))
        b = np.asarray(Image.open(two / rel / f"{image.stem}.png"))
        assert np.array_equal(a, b)
        ja = json.loads((one / rel / f"{image.stem}.json").read_text())
        jb = json.loads((two / rel / f"{image.stem}.json").read_text())
        assert [s["label"] for s in ja["segments"]] == [s["label"] for s in jb["segments"]]
        for sa, sb in zip(ja["segments"], jb["segments"]):
            assert sb["score"] == pytest.approx(sa["score"], abs=1e-5)
    with pytest.raises(SystemExit):
        main([*base, "--out", str(two), "--batch-size", "0"])
    assert "positive integer" in capsys.readouterr().err
