"""The authors' SAM space mode (``--proposals sam`` in demo mode) against a stand-alone
reproduction of the space's ``run_on_image`` (``tests/sam_space_reference.py``), and the
``--save-proposals`` block in every mode and with every generator."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import ovseg
from ovseg.cli import main
from tests import sam_space_reference as space
from tests.conftest import DATA, require

pytest.importorskip("segment_anything")
cv2 = pytest.importorskip("cv2")  # the reference resizes with cv2 itself

# 500x376: the space's truncated width 962 (rounding: 963), and a back-resize where cv2's
# nearest rule and PIL's pixel-centre rule differ
PHOTO = DATA / "coco-mini" / "train2017" / "000000409194.jpg"
ONE = ["person"]
FIVE = ["person", "bed", "wall", "floor", "lamp"]
# the tiny random SAM's masks all span the image, so SAM's box NMS would keep two of them
SAM_OPTIONS = {"model_type": "test_tiny", "points_per_side": 2, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def clip_file(tiny_model, tmp_path_factory):
    """A standalone CLIP file (OpenAI layout) made from the tiny model's CLIP."""
    sd = tiny_model.clip_adapter.clip_model.state_dict()
    sd = {k: v.contiguous() for k, v in sd.items() if k != "visual.mask_embedding"}
    path = tmp_path_factory.mktemp("clip") / "clip.pth"
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.array(Image.open(require(PHOTO)).convert("RGB"))


@pytest.fixture(scope="module")
def space_predictor(clip_file, photo):
    from ovseg.proposals import build_generator

    model = ovseg.build_clip_only(clip_file)
    predictor = ovseg.Predictor(model, build_generator("sam", model, **SAM_OPTIONS))
    predictor.set_image(photo)
    return predictor


def _saved_inputs(predictor, names: list[str], folder) -> dict[str, np.ndarray]:
    """What the space's rule starts from, saved and read back: the SAM masks at the working
    size, the CLIP features of the masked crops and the text features of the names."""
    features = predictor.clip_features()
    masks = predictor.proposals.masks[features.valid] > 0.5
    text = predictor.model.encode_text(space.with_others(names))
    path = folder / "inputs.npz"
    np.savez(path, masks=masks.numpy(), image=features.features.numpy(), text=text.numpy())
    return dict(np.load(path))


@pytest.mark.parametrize("names", [ONE, FIVE], ids=["one-name", "five-names"])
def test_space_labels_equal_the_stand_alone_reproduction(space_predictor, photo, names, tmp_path):
    height, width = photo.shape[:2]
    assert tuple(space_predictor.input_image.shape[1:]) == space.working_size(height, width)
    saved = _saved_inputs(space_predictor, names, tmp_path)
    assert len(saved["masks"]) >= 10 and saved["masks"].sum(0).max() > 1  # overlapping masks
    maps = {}
    for g in (1.0, 0.8, 0.5):
        expected = space.run_on_image_labels(
            saved["masks"], saved["image"], saved["text"], names, g, (height, width)
        )
        seg = space_predictor.predict(names, granularity=g)
        assert seg.class_names == space.with_others(names)
        got = np.where(seg.label_map < 0, space.BLANK, seg.label_map)
        assert got.shape == expected.shape
        assert np.array_equal(got, expected), f"g={g}: {(got != expected).mean():.2%} differ"
        maps[g] = expected
    # the comparison has something to compare: labelled and blank pixels, and the
    # granularity changes the result
    assert all((m == space.BLANK).any() and (m != space.BLANK).any() for m in maps.values())
    assert not np.array_equal(maps[1.0], maps[0.5])


def test_default_granularity_is_the_space_slider(space_predictor):
    default = space_predictor.predict(FIVE).label_map
    assert np.array_equal(default, space_predictor.predict(FIVE, granularity=0.8).label_map)


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def _segment(tmp_path, photo_path, names, *extra) -> tuple[dict, np.ndarray]:
    out = tmp_path / "out"
    argv = ["segment", str(photo_path), "--classes", ", ".join(names), "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random tiny weights
        assert main([*argv, "--save-proposals", *extra]) == 0
    stem = photo_path.stem
    record = json.loads((out / f"{stem}.json").read_text())
    return record, np.array(Image.open(out / f"{stem}.png"))


SAM_FLAGS = ["--proposals", "sam", "--sam-model-type", "test_tiny", "--sam-points-per-side", "2"]


@pytest.mark.parametrize(
    ("names", "granularity", "model"),
    [(FIVE, 0.5, "clip"), (ONE, None, "full")],
    ids=["five-g0.5-clip", "one-default-full-model"],
)
def test_segment_saved_proposals_give_the_label_png(tmp_path, clip_file, names, granularity, model):
    """As a user checks "why this label": the space's rule applied to the JSON's masks and
    probabilities gives the label PNG, pixel for pixel (SAM's own box NMS here)."""
    photo_path = require(PHOTO)
    flags = [*SAM_FLAGS, "--sam-box-nms-thresh", "1.0"]
    flags += ["--clip", str(clip_file)] if model == "clip" else ["--model", "ovseg-test-tiny"]
    if granularity is not None:
        flags += ["--granularity", str(granularity)]
    record, label = _segment(tmp_path, photo_path, names, *flags)
    block = record["proposals"]
    height, width = label.shape
    assert block["working_size"] == list(space.working_size(height, width))
    items = block["items"]
    assert items and all(len(i["probs"]) == len(record["class_names"]) for i in items)
    masks = np.stack([_decode(i["rle"]) for i in items])
    assert masks.shape[1:] == tuple(block["working_size"])
    probs = np.array([i["probs"] for i in items], dtype=np.float64)
    assert np.array_equal(probs.astype(np.float32).astype(np.float64), probs)  # float32, in full
    g = 0.8 if granularity is None else granularity
    expected = space.labels_from_probs(masks, probs, record["class_names"], g, (height, width))
    assert np.array_equal(label, expected.astype(label.dtype))
    kept = set(
        space.picked_masks(torch.tensor(probs, dtype=torch.float32), record["class_names"], g)
    )
    assert [i["kept"] for i in items] == [n in kept for n in range(len(items))]
    assert record["options"]["predict"]["save_proposals"] is True
    assert record["options"]["predict"].get("granularity") == granularity


def _check_block(record: dict, mode: str) -> list[dict]:
    block = record["proposals"]
    h, w = block["working_size"]
    for item in block["items"]:
        assert item["rle"]["size"] == [h, w] and _decode(item["rle"]).shape == (h, w)
        assert len(item["probs"]) == len(record["class_names"])
        assert isinstance(item["kept"], bool)
    if mode == "eval":
        assert all(i["kept"] for i in block["items"])
    return block["items"]


def test_save_proposals_with_the_maskformer_head_and_superpixels(tmp_path):
    """Every mode and generator writes the block: eval keeps every mask; the OVSeg demo
    keeps, for each name, the mask of highest probability (among the masks it classified)."""
    photo_path = tmp_path / "photo.png"
    image = np.array(Image.open(require(PHOTO)).convert("RGB"))[::4, ::4]
    Image.fromarray(image).save(photo_path)
    base = ["--model", "ovseg-test-tiny"]
    record, _ = _segment(tmp_path / "eval", photo_path, FIVE, *base, "--mode", "eval")
    items = _check_block(record, "eval")
    assert len(items) == 10  # the tiny model's 10 queries
    assert min(record["proposals"]["working_size"]) == 320  # the model's test resize
    record, _ = _segment(tmp_path / "demo", photo_path, FIVE, *base)
    items = _check_block(record, "demo")
    probs = np.array([i["probs"] for i in items])
    best = set(probs.argmax(axis=0).tolist())
    assert {n for n, i in enumerate(items) if i["kept"]} == best
    flags = ["--proposals", "superpixels", "--max-proposals", "12", "--granularity", "0.5"]
    record, _ = _segment(tmp_path / "sp", photo_path, ONE, *base, *flags)
    items = _check_block(record, "demo")
    probs = np.array([i["probs"] for i in items])
    kept = probs[:, 0] > 0.5 * probs[:, 0].max()  # "others" selects nothing
    assert [i["kept"] for i in items] == kept.tolist()


def test_granularity_errors(tmp_path, capsys, tiny_model):
    photo_path = tmp_path / "p.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo_path)
    base = ["segment", str(photo_path), "--classes", "a, b", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main([*base, "--model", "ovseg-test-tiny", "--granularity", "1.5"])
    assert "granularity must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert main([*base, "--model", "ovseg-test-tiny", "--mode", "eval", "--granularity", "0.5"])
    assert "granularity selects masks in demo mode" in capsys.readouterr().err
    with pytest.raises(ValueError, match="granularity must be in"):
        ovseg.InferenceOptions(granularity=-0.1)
    predictor = ovseg.Predictor(tiny_model)
    predictor.set_image(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="granularity must be in"):
        predictor.predict(["a"], mode="demo", granularity=2.0)
    tta = ovseg.Predictor(tiny_model, options=ovseg.InferenceOptions(tta=True))
    tta.set_image(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="save_proposals needs one set of masks"):
        tta.predict(["a"], save_proposals=True)
