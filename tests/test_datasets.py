"""Benchmark readers: real samples, class lists, small synthetic layouts and clear errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg.data.datasets import DATASETS, IGNORE_LABEL, build_dataset, list_datasets
from tests.conftest import DATA, require


def save(array, path: Path, mode=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format=fmt)
    return path


def jpg(path: Path, h: int, w: int):
    return save(np.zeros((h, w, 3), np.uint8), path)


def test_registry_and_class_lists():
    assert list_datasets() == [
        "ade20k-150",
        "ade20k-847",
        "pascal-context-59",
        "pascal-context-459",
        "pascal-voc-20",
        "coco-stuff-171",
        "camvid",
    ]
    sizes = {name: len(cls.class_names) for name, cls in DATASETS.items()}
    assert sizes == {
        "ade20k-150": 150,
        "ade20k-847": 847,
        "pascal-context-59": 59,
        "pascal-context-459": 459,
        "pascal-voc-20": 20,
        "coco-stuff-171": 171,
        "camvid": 11,
    }
    for cls in DATASETS.values():
        names = cls.class_names
        assert len(set(names)) == len(names)
        assert all(n == n.strip() and n for n in names)
    assert DATASETS["ade20k-150"].class_names[:3] == ("wall", "building", "sky")
    assert DATASETS["ade20k-150"].class_names[8] == "window"  # detectron2 has "window " (stripped)
    assert DATASETS["ade20k-847"].class_names[1] == "building, edifice"
    assert DATASETS["pascal-voc-20"].class_names[-1] == "tvmonitor"
    assert DATASETS["coco-stuff-171"].class_names[-1] == "wood"
    assert DATASETS["pascal-context-459"].class_names[0] == "accordion"
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("ade20k-151", ".")


def test_ade20k_150_real_sample():
    root = require(DATA / "ade20k-150-sample")
    ds = build_dataset("ade20k-150", root)
    assert [item.stem for item in ds.items] == [f"ADE_val_0000000{i}" for i in (1, 2, 3)]
    for i in range(len(ds)):
        label = ds.read_label(i)
        raw = np.array(Image.open(ds[i].label)).astype(np.int64)
        assert label.dtype == np.int64 and label.shape == raw.shape
        np.testing.assert_array_equal(label, np.where(raw == 0, IGNORE_LABEL, raw - 1))
    names = [
        line.split(",")[-1] for line in (root / "objectInfo150.csv").read_text().splitlines()[1:]
    ]
    # the csv spells names differently (';'-separated WordNet words); rows still align
    assert len(names) == 150
    for csv_name, name in zip(names, ds.class_names):
        assert set(csv_name.split(";")) & set(name.replace(",", " ").split()), (csv_name, name)


def test_camvid_real_sample():
    root = require(DATA / "camvid")
    val, train = build_dataset("camvid", root), build_dataset("camvid", root, "train")
    assert (len(val), len(train)) == (101, 367)
    assert build_dataset("camvid", root, "training").split == "train"  # alias
    label = val.read_label(0)
    assert label.shape == (360, 480)
    assert set(np.unique(label)) <= set(range(11)) | {IGNORE_LABEL}


def test_synthetic_layouts(tmp_path):
    raw = np.array([[0, 1], [2, 255]], np.uint8)
    # ADE20K-847 and PC-459: 16-bit TIFF, 65535 ignore, values above 255 allowed
    ade = tmp_path / "ADE20K_2021_17_01"
    jpg(ade / "images_detectron2/validation/ADE_val_1.jpg", 2, 2)
    save(
        np.array([[0, 846], [300, 65535]], np.uint16),
        ade / "annotations_detectron2/validation/ADE_val_1.tif",
    )
    label = build_dataset("ade20k-847", ade).read_label(0)
    np.testing.assert_array_equal(label, [[0, 846], [300, IGNORE_LABEL]])
    pc = tmp_path / "VOC2010"
    jpg(pc / "JPEGImages/2008_000001.jpg", 2, 2)
    save(
        np.array([[0, 458], [3, 65535]], np.uint16),
        pc / "annotations_detectron2/pc459_val/2008_000001.tif",
    )
    save(raw, pc / "annotations_detectron2/pc59_val/2008_000001.png")
    np.testing.assert_array_equal(
        build_dataset("pascal-context-459", pc).read_label(0), [[0, 458], [3, -1]]
    )
    np.testing.assert_array_equal(
        build_dataset("pascal-context-59", pc).read_label(0), [[0, 1], [2, -1]]
    )
    coco = tmp_path / "coco"
    jpg(coco / "val2017/000000000139.jpg", 2, 2)
    save(raw, coco / "stuffthingmaps_detectron2/val2017/000000000139.png")
    np.testing.assert_array_equal(
        build_dataset("coco-stuff-171", coco).read_label(0), [[0, 1], [2, -1]]
    )
    # VOC: palette PNG, 0 = background and 255 = void are ignored, classes are value - 1
    voc = tmp_path / "VOC2012"
    jpg(voc / "JPEGImages/2007_000033.jpg", 2, 2)
    pal = Image.fromarray(np.array([[0, 1], [20, 255]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0] + [0] * 750)
    (voc / "SegmentationClass").mkdir()
    pal.save(voc / "SegmentationClass/2007_000033.png")
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    ds = build_dataset("pascal-voc-20", voc)
    np.testing.assert_array_equal(ds.read_label(0), [[-1, 0], [19, -1]])


def make_camvid(root: Path, label: np.ndarray, size=(2, 2)):
    jpg(root / "val/images/a.jpg", *size)
    save(label.astype(np.uint8), root / "val/labels/a.png")
    return root


def test_missing_root_names_root_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*expected camvid/"):
        build_dataset("camvid", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        build_dataset("camvid", tmp_path, "dev")


def test_out_of_range_label_names_file(tmp_path):
    ds = build_dataset("camvid", make_camvid(tmp_path, np.array([[0, 11], [12, 255]])))
    with pytest.raises(ValueError, match=r"a\.png: label values \[11, 12\] are outside the 11"):
        ds.read_label(0)


def test_size_mismatch_names_both_files(tmp_path):
    ds = build_dataset("camvid", make_camvid(tmp_path, np.zeros((2, 2)), size=(3, 2)))
    with pytest.raises(ValueError, match=r"a\.png: label is 2x2.*a\.jpg is 3x2"):
        ds.read_label(0)


def test_unreadable_and_colour_labels(tmp_path):
    root = make_camvid(tmp_path, np.zeros((2, 2)))
    ds = build_dataset("camvid", root)
    (root / "val/labels/a.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"a\.png: cannot read"):
        ds.read_label(0)
    save(np.zeros((2, 2, 3), np.uint8), root / "val/labels/a.png")
    with pytest.raises(ValueError, match="mode RGB"):
        ds.read_label(0)


def test_label_without_image(tmp_path):
    root = make_camvid(tmp_path, np.zeros((2, 2)))
    save(np.zeros((2, 2), np.uint8), root / "val/labels/b.png")
    with pytest.raises(FileNotFoundError, match=r"b\.png has no image b"):
        build_dataset("camvid", root)


def test_camvid_class_file_must_match(tmp_path):
    root = make_camvid(tmp_path, np.zeros((2, 2)))
    (root / "classes.txt").write_text("sky\nroad\n")
    with pytest.raises(ValueError, match="classes.txt"):
        build_dataset("camvid", root)
