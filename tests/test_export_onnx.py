"""ONNX export of the image side: onnxruntime equals PyTorch; the onnxruntime Predictor path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ovseg.data.transforms import shortest_edge_size

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # one export of the tiny model: ~15 s on 2 cores

from ovseg.inference.onnx import (  # noqa: E402
    META_FILE,
    OnnxClipEncoder,
    OnnxProposalGenerator,
    export_onnx,
    onnx_predictor,
    verify_onnx,
)
from tests.test_fast_inference import NAMES, fresh_tiny, photo  # noqa: E402
from tests.test_official_fixture import assert_close_to_scale, max_abs  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    model = fresh_tiny()
    cfg = model.config
    h, w = shortest_edge_size(*photo().shape[:2], cfg.min_size_test, cfg.max_size_test)
    div = cfg.size_divisibility
    export_onnx(model, folder, image_size=(-(-h // div) * div, -(-w // div) * div), crop_batch=4)
    assert not model.training  # the exporter must not leave the model in training mode
    return model, folder, (h, w)


def test_onnx_outputs_equal_pytorch(exported):
    model, folder, (h, w) = exported
    assert json.loads((folder / META_FILE).read_text())["crop_batch"] == 4
    diffs = verify_onnx(model, folder)
    assert set(diffs) == {
        "proposals.embeddings",
        "proposals.mask_logits",
        "proposals.class_logits",
        "clip.features",
        "clip.logits",
    }
    assert all(d < 1e-3 for d in diffs.values()), diffs


@torch.no_grad()
def test_onnx_generator_and_encoder(exported):
    model, folder, (h, w) = exported
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, h, w), np.uint8))
    ours, ref = OnnxProposalGenerator(folder)(image), model.propose(image)
    assert max_abs(ours.masks, ref.masks) < 1e-4
    assert max_abs(ours.embeddings, ref.embeddings) < 1e-4
    crops, regions = torch.randn(6, 3, 224, 224), (torch.rand(6, 1, 224, 224) > 0.5).float()
    features = OnnxClipEncoder(folder)(crops, regions)  # 6 = one full batch of 4 + padded 2
    assert max_abs(features, model.clip_adapter.encode_masked(crops, regions)) < 1e-4
    with pytest.raises(ValueError, match="image-size"):
        OnnxProposalGenerator(folder)(image[:, : h // 2])


def test_onnx_predictor_equals_pytorch_predictor(exported):
    model, folder, (h, w) = exported
    from ovseg import Predictor

    predictor = onnx_predictor(model, folder)
    predictor.set_image(photo())
    seg = predictor.predict(NAMES, mask_threshold=0.3)
    reference = Predictor(model)
    reference.set_image(photo())
    ref = reference.predict(NAMES, mask_threshold=0.3)
    assert_close_to_scale(seg.sem_seg, ref.sem_seg, rel=1e-3)
    assert (seg.label_map == ref.label_map).mean() > 0.999


def test_export_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="multiples"):
        export_onnx(fresh_tiny(), tmp_path, image_size=(100, 128))
