"""Preparation commands: the real full-ADE20K sample and small files in the original formats."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg.data.datasets import DATASETS, build_dataset
from ovseg.data.datasets.ade20k import ade20k_847_source_ids
from ovseg.data.prepare import (
    prepare_ade20k_full,
    prepare_coco_stuff,
    prepare_pascal_context,
    prepare_pascal_voc,
)
from ovseg.data.prepare.ade20k_full import (
    ade20k_847_lut,
    ade20k_class_mask,
    official_resize_shape,
    resize_nearest,
)
from tests.conftest import DATA, require

ADE_FULL = DATA / "ade20k-full-sample" / "ADE20K_2021_17_01"


@pytest.fixture(scope="module")
def ade_full_copy(tmp_path_factory):
    """The sample's images and _seg.png files (not the part masks) in the release layout."""
    require(ADE_FULL)
    root = tmp_path_factory.mktemp("ade") / "ADE20K_2021_17_01"
    for path in ADE_FULL.rglob("ADE_*"):
        if path.is_file() and (path.suffix in (".jpg", ".json") or path.name.endswith("_seg.png")):
            dst = root / path.relative_to(ADE_FULL)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dst)
    return root


def test_official_resize_rule():
    assert official_resize_shape(1467, 2200) == (512, 768)
    assert official_resize_shape(2200, 1467) == (768, 512)
    assert official_resize_shape(512, 900) is None
    assert official_resize_shape(400, 300) is None


def test_resize_nearest_is_opencv_floor_rule():
    src = np.arange(16).reshape(4, 4)
    np.testing.assert_array_equal(resize_nearest(src, (2, 2)), [[0, 2], [8, 10]])
    np.testing.assert_array_equal(resize_nearest(np.array([[1, 2]]), (1, 4)), [[1, 1, 2, 2]])


def test_ade20k_full_real_sample(ade_full_copy):
    counts = prepare_ade20k_full(ade_full_copy, ("validation", "training"), show_progress=False)
    assert counts == {"validation": 0, "training": 3}
    ds = build_dataset("ade20k-847", ade_full_copy, "train")
    lut = ade20k_847_lut()
    ids = set(ade20k_847_source_ids())
    for i, item in enumerate(ds.items):
        source = next(ade_full_copy.rglob(item.image.name))
        class_mask = ade20k_class_mask(source.with_name(source.stem + "_seg.png"))
        shape = official_resize_shape(*class_mask.shape)
        label = ds.read_label(i)  # also checks the written JPEG has the label's size
        assert label.shape == shape and min(shape) == 512
        expected = lut[resize_nearest(class_mask, shape)].astype(np.int64)
        np.testing.assert_array_equal(label, np.where(expected == 65535, -1, expected))
        # every whole object of the image's json whose class is one of the 847 keeps its name
        objects = json.loads(source.with_suffix(".json").read_text())["annotation"]["object"]
        visible = set(np.unique(class_mask).tolist())
        json_names = {
            o["name"] for o in objects if o["name_ndx"] in ids and o["name_ndx"] in visible
        }
        full_names = {ds.class_names[c] for c in np.unique(lut[class_mask]) if c != 65535}
        assert full_names == json_names
    # resumable: existing outputs are kept, --overwrite rewrites
    first = ds[0].label.stat().st_mtime_ns
    prepare_ade20k_full(ade_full_copy, ("training",), show_progress=False)
    assert ds[0].label.stat().st_mtime_ns == first


def test_ade20k_full_synthetic_validation_image(tmp_path):
    folder = tmp_path / "images/ADE/validation/indoor"
    folder.mkdir(parents=True)
    wall, sky, other = 2978, 2420, 5  # 5 is not one of the 847 classes
    cls = np.array([[wall, sky], [other, 0]])
    seg = np.stack([(cls // 256) * 10, cls % 256, np.zeros_like(cls)], -1).astype(np.uint8)
    Image.fromarray(seg).save(folder / "ADE_val_00000001_seg.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(folder / "ADE_val_00000001.jpg")
    assert prepare_ade20k_full(tmp_path, show_progress=False) == {"validation": 1}
    label = build_dataset("ade20k-847", tmp_path).read_label(0)
    names = DATASETS["ade20k-847"].class_names
    assert [names[label[0, 0]], names[label[0, 1]]] == ["wall", "sky"]
    assert label[1, 0] == label[1, 1] == -1
    with pytest.raises(FileNotFoundError, match="images"):
        prepare_ade20k_full(tmp_path / "missing")


def write_pascal_context(root: Path, label_map: np.ndarray):
    scipy_io = pytest.importorskip("scipy.io")
    names_459 = DATASETS["pascal-context-459"].class_names
    root.mkdir(parents=True)
    (root / "labels.txt").write_text("".join(f"{i + 1}: {n}\n" for i, n in enumerate(names_459)))
    names_59 = DATASETS["pascal-context-59"].class_names
    (root / "59_labels.txt").write_text(
        "".join(f"{i + 1}: {n}\n" for i, n in enumerate(names_59)) + "\n"
    )
    (root / "pascalcontext_val.txt").write_text("2008_000002\n2008_000003\n")
    (root / "trainval").mkdir()
    scipy_io.savemat(root / "trainval/2008_000002.mat", {"LabelMap": label_map.astype(np.uint16)})
    (root / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((*label_map.shape, 3), np.uint8)).save(
        root / "JPEGImages/2008_000002.jpg"
    )


def test_pascal_context_mat(tmp_path):
    names_459 = DATASETS["pascal-context-459"].class_names
    names_59 = DATASETS["pascal-context-59"].class_names
    aeroplane, accordion, bag = (names_459.index(n) + 1 for n in ("aeroplane", "accordion", "bag"))
    root = tmp_path / "VOC2010"
    write_pascal_context(root, np.array([[0, aeroplane], [accordion, bag]]))
    # the id without a .mat (2008_000003) is skipped, as in the official script
    assert prepare_pascal_context(root, show_progress=False) == 1
    pc459 = build_dataset("pascal-context-459", root).read_label(0)
    assert pc459[0, 0] == -1
    assert [names_459[v] for v in pc459.ravel()[1:]] == ["aeroplane", "accordion", "bag"]
    pc59 = build_dataset("pascal-context-59", root).read_label(0)
    assert pc59[0, 0] == -1 and pc59[1, 0] == -1  # unlabelled, and accordion is not in PC-59
    assert (names_59[pc59[0, 1]], names_59[pc59[1, 1]]) == ("aeroplane", "bag")
    tif = Image.open(root / "annotations_detectron2/pc459_val/2008_000002.tif")
    assert tif.mode.startswith("I;16") and np.array(tif)[0, 0] == 65535


def test_pascal_context_bad_mat(tmp_path):
    root = tmp_path / "VOC2010"
    write_pascal_context(root, np.array([[0, 460]]))
    with pytest.raises(ValueError, match=r"2008_000002\.mat: LabelMap values 0..460"):
        prepare_pascal_context(root, show_progress=False)
    (root / "trainval/2008_000002.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"2008_000002\.mat: cannot read"):
        prepare_pascal_context(root, show_progress=False, overwrite=True)


def test_pascal_voc_palette(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n2007_000042\n")
    for image_id, values in (("2007_000033", [[0, 1], [20, 255]]), ("2007_000042", [[0, 255]])):
        pal = Image.fromarray(np.array(values, np.uint8), mode="P")
        pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        pal.save(root / f"SegmentationClass/{image_id}.png")
    # the all-background image is skipped, as in the official script
    assert prepare_pascal_voc(root, show_progress=False) == 1
    out = np.array(Image.open(root / "annotations_detectron2/val/2007_000033.png"))
    np.testing.assert_array_equal(out, [[255, 0], [19, 255]])
    assert not (root / "annotations_detectron2/val/2007_000042.png").exists()
    Image.fromarray(np.array([[21]], np.uint8)).save(root / "SegmentationClass/2007_000033.png")
    with pytest.raises(ValueError, match=r"2007_000033\.png: values \[21\]"):
        prepare_pascal_voc(root, show_progress=False, overwrite=True)


def test_coco_stuff_maps(tmp_path):
    src = tmp_path / "coco/stuffthingmaps/val2017"
    src.mkdir(parents=True)
    # 0 = person (id 1), 11 = id 12 (unused in COCO), 181 = wood (id 182), 255 = unlabelled
    Image.fromarray(np.array([[0, 11], [181, 255]], np.uint8)).save(src / "000000000139.png")
    assert prepare_coco_stuff(tmp_path / "coco", show_progress=False) == 1
    out = np.array(Image.open(tmp_path / "coco/stuffthingmaps_detectron2/val2017/000000000139.png"))
    np.testing.assert_array_equal(out, [[0, 255], [170, 255]])
