"""``ovseg eval``: GT-as-prediction = 100 on real samples, errors, resume, oracles, model mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg.cli import main
from ovseg.data.datasets import build_dataset
from ovseg.evaluation import ConfusionCache, evaluate_dataset
from ovseg.evaluation.oracles import gt_mask_oracle, proposal_oracle
from ovseg.evaluation.sem_seg import SemSegEvaluator
from ovseg.proposals import build_generator
from ovseg.proposals.ground_truth import GroundTruthMasks
from tests.conftest import DATA, ROOT, require


def eval_argv(dataset: str, root, *options) -> list[str]:
    """``ovseg eval`` arguments; ``options`` are flags and values, converted to str."""
    return ["eval", "--dataset", dataset, "--root", str(root), *map(str, options)]


def write_predictions(dataset, folder: Path, limit: int, noise: float = 0.0, seed: int = 0):
    """GT labels as prediction PNGs (ignore -> 0), with a fraction ``noise`` of random pixels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(min(limit, len(dataset))):
        label = dataset.read_label(i)
        pred = np.where(label < 0, 0, label)
        flip = rng.random(pred.shape) < noise
        pred[flip] = rng.integers(0, dataset.num_classes, int(flip.sum()))
        Image.fromarray(pred.astype(np.uint8)).save(folder / f"{dataset[i].stem}.png")
    return folder


@pytest.mark.parametrize(
    "name, sample, limit",
    [("ade20k-150", "ade20k-150-sample", 3), ("camvid", "camvid", 12)],
)
def test_ground_truth_as_predictions_scores_exactly_100(tmp_path, capsys, name, sample, limit):
    root = require(DATA / sample)
    preds = write_predictions(build_dataset(name, root), tmp_path / "preds", limit)
    out = tmp_path / "out" / "metrics.json"
    argv = eval_argv(name, root, "--predictions", preds, "--limit", limit, "--json", out, "--quiet")
    assert main(argv) == 0
    metrics = json.loads(out.read_text())
    assert (metrics["mIoU"], metrics["fwIoU"], metrics["pACC"], metrics["mACC"]) == (100.0,) * 4
    assert metrics["num_images"] == limit and metrics["dataset"] == name
    assert all(v in (None, 100.0) for v in metrics["per_class_iou"].values())
    assert Image.open(out.with_suffix(".png")).format == "PNG"
    assert "mIoU" in capsys.readouterr().out


def tiny_camvid(tmp_path: Path, labels: list[np.ndarray]) -> Path:
    root = tmp_path / "camvid"
    for i, label in enumerate(labels):
        (root / "val/images").mkdir(parents=True, exist_ok=True)
        (root / "val/labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((*label.shape, 3), np.uint8)).save(root / f"val/images/{i}.jpg")
        Image.fromarray(label.astype(np.uint8)).save(root / f"val/labels/{i}.png")
    return root


def run_cli(capsys, argv) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_bad_input_errors_name_the_file(tmp_path, capsys):
    root = tiny_camvid(tmp_path, [np.array([[0, 1], [2, 255]])])
    preds = tmp_path / "preds"
    preds.mkdir()
    base = eval_argv("camvid", root, "--predictions", preds, "--quiet")
    code, text = run_cli(capsys, base)
    assert code == 2 and "no prediction" in text and "0.png" in text
    Image.fromarray(np.array([[0, 11], [0, 0]], np.uint8)).save(preds / "0.png")
    code, text = run_cli(capsys, base)
    assert code == 2 and "0.png: prediction values up to 11" in text
    Image.fromarray(np.zeros((3, 2), np.uint8)).save(preds / "0.png")
    code, text = run_cli(capsys, base)
    assert code == 2 and "0.png: prediction is 3x2" in text
    code, text = run_cli(capsys, eval_argv("camvid", tmp_path / "nope", "--predictions", preds))
    assert code == 2 and "nope does not exist" in text
    code, text = run_cli(capsys, base + ["--model", "ovseg-test-tiny"])
    assert code == 2 and "--predictions" in text


def test_unlabelled_prediction_pixels(tmp_path, capsys):
    """255 in an 8-bit prediction PNG (what ``ovseg segment`` writes in demo mode) is
    unlabelled: a miss for the ground-truth class, a prediction of no class."""
    root = tiny_camvid(tmp_path, [np.array([[0, 0], [1, 1]])])
    preds = tmp_path / "preds"
    preds.mkdir()
    Image.fromarray(np.array([[0, 255], [1, 255]], np.uint8)).save(preds / "0.png")
    out = tmp_path / "m.json"
    argv = eval_argv("camvid", root, "--predictions", preds, "--json", out, "--quiet")
    assert main(argv) == 0
    metrics = json.loads(out.read_text())
    assert metrics["pACC"] == 50.0 and metrics["num_pixels"] == 4
    assert metrics["per_class_iou"]["sky"] == 50.0


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_from_cache(tmp_path):
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 11, (4, 5)) for _ in range(5)]
    dataset = build_dataset("camvid", tiny_camvid(tmp_path, labels))
    preds = [rng.integers(0, 11, (4, 5)) for _ in range(5)]
    calls, interrupt = [], [True]

    def predict(index, gt):
        calls.append(index)
        if len(calls) == 3 and interrupt:
            raise Interrupted
        return {"default": preds[index]}

    cache = ConfusionCache(tmp_path / "cache", {"run": 1})
    with pytest.raises(Interrupted):
        evaluate_dataset(dataset, predict, cache=cache, progress=False)
    assert len(cache) == 2
    calls.clear()
    interrupt.clear()
    resumed = evaluate_dataset(
        dataset, predict, cache=ConfusionCache(tmp_path / "cache", {"run": 1}), progress=False
    )["default"]
    assert calls == [2, 3, 4]
    full = SemSegEvaluator(dataset.class_names)
    for label, pred in zip(labels, preds):
        full.update(pred, label)
    np.testing.assert_array_equal(resumed.confusion, full.confusion)
    with pytest.raises(ValueError, match=r"different run \(differs in \['run'\]\)"):
        ConfusionCache(tmp_path / "cache", {"run": 2})


def perfect_classifier(label: np.ndarray, num_classes: int):
    def classify(image, masks):
        probs = np.zeros((len(masks), num_classes), np.float32)
        for i, mask in enumerate(masks.numpy()):
            probs[i, np.bincount(label[mask]).argmax()] = 1
        import torch

        return torch.from_numpy(probs)

    return classify


def test_gt_mask_oracle_with_perfect_classifier_is_100():
    ds = build_dataset("ade20k-150", require(DATA / "ade20k-150-sample"))
    ev = SemSegEvaluator(ds.class_names)
    for i in range(len(ds)):
        gt = ds.read_label(i)
        image = np.zeros((*gt.shape, 3), np.uint8)
        ev.update(gt_mask_oracle(image, gt, perfect_classifier(gt, 150), 150), gt)
    assert ev.compute()["mIoU"] == 100.0


def test_proposal_oracle_with_ground_truth_proposals_is_100():
    ds = build_dataset("ade20k-150", require(DATA / "ade20k-150-sample"))
    generator = build_generator("ground-truth", None)
    assert isinstance(generator, GroundTruthMasks)
    ev = SemSegEvaluator(ds.class_names)
    for i in range(len(ds)):
        gt = ds.read_label(i)
        generator.set_label(gt)

        def propose(image):
            import torch

            return generator(torch.from_numpy(image).permute(2, 0, 1)).masks

        ev.update(proposal_oracle(np.zeros((*gt.shape, 3), np.uint8), gt, propose, 150), gt)
    assert ev.compute()["mIoU"] == 100.0
    with pytest.raises(RuntimeError, match="set_label"):
        GroundTruthMasks()(np.zeros((3, 2, 2)))


def test_model_modes_with_tiny_model(tmp_path, capsys, monkeypatch):
    pytest.importorskip("open_clip")
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    root = require(DATA / "camvid")
    base = eval_argv("camvid", root, "--model", "ovseg-test-tiny", "--limit", 1, "--quiet")
    out = tmp_path / "m.json"
    assert main(base + ["--json", str(out)]) == 0
    first = json.loads(out.read_text())
    assert 0 <= first["mIoU"] <= 100 and first["num_images"] == 1
    assert len(list((tmp_path / "home" / "eval-cache").glob("*/*.npz"))) == 1
    assert main(base + ["--json", str(out)]) == 0  # served from the cache
    assert json.loads(out.read_text()) == first
    assert main(base + ["--oracle", "gt-masks"]) == 0
    assert main(base + ["--oracle", "proposal-oracle"]) == 0
    assert main(base + ["--sweep", "--lambdas", "0.6,0.7", "--thresholds", "0.4"]) == 0
    text = capsys.readouterr().out
    assert "best for camvid: lambda=" in text


@pytest.mark.slow  # three interpreters importing torch: ~6 s on an idle 2-core machine
def test_torchrun_two_processes_equal_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun not installed next to this python")
    root = require(DATA / "camvid")
    preds = write_predictions(build_dataset("camvid", root), tmp_path / "p", 7, noise=0.3)
    seen = tmp_path / "seen.txt"
    args = eval_argv(
        "camvid", root, "--predictions", preds, "--limit", 7, "--quiet", "--seen-classes", seen
    )
    (tmp_path / "seen.txt").write_text("sky\nroad\ncar\n")
    assert main(args + ["--json", str(tmp_path / "one.json")]) == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "ovseg"]
    result = subprocess.run(
        cmd + args + ["--json", str(tmp_path / "two.json")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert 0 < one["mIoU"] < 100 and "mIoU-unseen" in one
    assert two == one


def test_sixteen_bit_predictions_for_847_classes(tmp_path, capsys):
    root = tmp_path / "ADE20K_2021_17_01"
    (root / "images_detectron2/validation").mkdir(parents=True)
    (root / "annotations_detectron2/validation").mkdir(parents=True)
    gt = np.array([[0, 846], [300, 65535]], np.uint16)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "images_detectron2/validation/x.jpg")
    Image.fromarray(gt).save(root / "annotations_detectron2/validation/x.tif")
    preds = tmp_path / "preds"
    preds.mkdir()
    Image.fromarray(np.array([[0, 846], [300, 7]], np.uint16)).save(preds / "x.png")
    out = tmp_path / "m.json"
    assert (
        main(eval_argv("ade20k-847", root, "--predictions", preds, "--json", out, "--quiet")) == 0
    )
    metrics = json.loads(out.read_text())
    assert metrics["mIoU"] == 100.0 and metrics["num_pixels"] == 3
    assert metrics["per_class_iou"]["wall"] == 100.0


def test_oracle_fusion_matches_the_full_class_argmax():
    import torch

    from ovseg.evaluation.oracles import assign_by_overlap, oracle_fusion

    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 5, 7, generator=gen)
    masks[:, :, 0] = 0  # a column no mask covers: class 0 wins, as in the full argmax
    label = torch.randint(-1, 40, (5, 7), generator=gen)
    assigned = assign_by_overlap(masks, label, 40)
    assigned[0] = -1
    full = torch.zeros(6, 40)
    full[torch.arange(1, 6), assigned[1:]] = 1
    sem = torch.einsum("nk,nhw->khw", full, masks)
    sem = torch.nn.functional.interpolate(sem[None], size=(9, 11), mode="bilinear")[0]
    expected = sem.argmax(dim=0).numpy()
    np.testing.assert_array_equal(oracle_fusion(masks, assigned, 40, (9, 11)), expected)


def test_batches_predict_only_uncached_images_and_score_as_one_at_a_time(tmp_path):
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 11, (4, 5)) for _ in range(6)]
    labels[3][:] = 255  # all ignore: never predicted
    dataset = build_dataset("camvid", tiny_camvid(tmp_path, labels))
    preds = [rng.integers(0, 11, (4, 5)) for _ in range(6)]
    batches = []

    def predict(index, gt):
        return {"default": preds[index]}

    def predict_batch(indices, gts):
        batches.append(list(indices))
        assert all(np.array_equal(gt, dataset.read_label(i)) for i, gt in zip(indices, gts))
        return [{"default": preds[i]} for i in indices]

    cache = ConfusionCache(tmp_path / "cache", {"run": 1})
    evaluate_dataset(dataset, predict, cache=cache, progress=False)
    for stem in ("0", "1", "5"):
        (tmp_path / "cache" / f"{stem}.npz").unlink()
    resumed = evaluate_dataset(
        dataset, predict, cache=cache, progress=False, predict_batch=predict_batch, batch_size=2
    )["default"]
    # runs of two: (0, 1) both to redo, (2, 3) cached / all ignore, (4, 5) only 5
    assert batches == [[0, 1], [5]]
    full = SemSegEvaluator(dataset.class_names)
    for i, pred in enumerate(preds):
        if i != 3:  # the all-ignore image adds nothing
            full.update(pred, dataset.read_label(i))
    np.testing.assert_array_equal(resumed.confusion, full.confusion)


def test_model_batches_give_the_same_scores(tmp_path, capsys, monkeypatch):
    pytest.importorskip("open_clip")
    monkeypatch.setenv("OVSEG_HOME", str(tmp_path / "home"))
    root = require(DATA / "camvid")
    base = eval_argv("camvid", root, "--model", "ovseg-test-tiny", "--limit", 3, "--quiet")
    base += ["--no-cache", "--sweep", "--lambdas", "0.6,0.7", "--thresholds", "0.4,0.5"]
    results = []
    for size in (1, 3):
        out = tmp_path / f"b{size}.json"
        assert main(base + ["--batch-size", str(size), "--json", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["sweep"] == results[1]["sweep"]
    assert results[0]["per_class_iou"] == results[1]["per_class_iou"]
    code, text = run_cli(capsys, base + ["--batch-size", "2", "--oracle", "gt-masks"])
    assert code == 2 and "--batch-size" in text
