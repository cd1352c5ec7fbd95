"""Float precision switches: TF32 off inside ovseg's own calls (the exact path), restored
afterwards; fp16 refused off CUDA with a clear error."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import ovseg
from ovseg.inference.options import InferenceOptions
from ovseg.modeling.precision import ieee_fp32, tf32_enabled


@pytest.fixture()
def tf32_on():
    """PyTorch's own default: TF32 allowed in cuDNN convolutions (and here in matmuls too)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_ieee_fp32_switches_tf32_off_inside_and_restores(tf32_on):
    with ieee_fp32():
        assert not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
        with ieee_fp32():  # nested: still off, and the outer state comes back after
            assert not tf32_enabled()
        assert not tf32_enabled()
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(KeyError), ieee_fp32():  # restored when the call fails too
        raise KeyError("boom")
    assert torch.backends.cudnn.allow_tf32


def test_ieee_fp32_with_the_new_precision_api():
    """A caller who set TF32 through ``fp32_precision`` (PyTorch refuses the legacy getter
    then) gets the same scoping, through the new API."""
    conv, rnn = torch.backends.cudnn.conv, torch.backends.cudnn.rnn
    saved = (conv.fp32_precision, rnn.fp32_precision)
    try:
        conv.fp32_precision, rnn.fp32_precision = "tf32", "ieee"
        with ieee_fp32():
            assert conv.fp32_precision == "ieee" and not tf32_enabled()
        assert conv.fp32_precision == "tf32" and rnn.fp32_precision == "ieee"
    finally:
        conv.fp32_precision, rnn.fp32_precision = saved


def _record_tf32(module: torch.nn.Module, seen: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_hook(lambda *_: seen.append(tf32_enabled()))


@pytest.mark.parametrize("allow", [False, True])
def test_predictor_runs_its_model_without_tf32_unless_asked(tiny_model, tf32_on, allow):
    predictor = ovseg.Predictor(copy.deepcopy(tiny_model), options=InferenceOptions(tf32=allow))
    seen_backbone, seen_clip = [], []
    handles = [
        _record_tf32(predictor.model.backbone, seen_backbone),
        _record_tf32(predictor.model.clip_adapter.clip_model.visual.conv1, seen_clip),
    ]
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    predictor.predict(["cat", "dog"])
    for handle in handles:
        handle.remove()
    assert seen_backbone == [allow] and seen_clip and set(seen_clip) == {allow}
    assert tf32_enabled()  # the caller's setting is back


def test_model_forward_is_the_exact_path(tiny_model, tf32_on):
    seen = []
    handle = _record_tf32(tiny_model.backbone, seen)
    try:
        tiny_model(torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), ["cat", "dog"])
    finally:
        handle.remove()
    assert seen == [False] and tf32_enabled()


@pytest.mark.parametrize("field", ["dtype", "text_dtype"])
def test_fp16_is_refused_off_cuda(tiny_model, field):
    with pytest.raises(ValueError, match="fp16.*CUDA only.*bf16"):
        ovseg.Predictor(copy.deepcopy(tiny_model), options=InferenceOptions(**{field: "fp16"}))
