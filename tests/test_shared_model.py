"""A model can be shared: predictors never change the caller's model, each dtype gets its own
prepared copy sharing the fp32 weights it does not convert, predictors say clearly that they
are one-thread objects, and the text caches take locks."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

import ovseg
from ovseg.inference.options import InferenceOptions

CLASSES = ["sky", "tree", "road"]


@pytest.fixture
def model(tiny_model):
    return copy.deepcopy(tiny_model)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _scores(predictor, image) -> torch.Tensor:
    predictor.set_image(image)
    return predictor.predict(CLASSES, mode="eval").sem_seg


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_readme_lines_in_order_leave_the_reference_exact(model, tiny_model, image):
    """bf16, then int8, then the reference predictor, all on one model: the reference is
    bit-equal to a fresh model's (it was 3.8e-3 off: int8 layers and bf16-rounded weights)."""
    before = _snapshot(model)
    ovseg.Predictor(model, options=InferenceOptions(dtype="bf16"))
    ovseg.Predictor(model, options=InferenceOptions(dtype="int8"))
    reference = ovseg.Predictor(model)
    fresh = ovseg.Predictor(copy.deepcopy(tiny_model))
    assert torch.equal(_scores(reference, image), _scores(fresh, image))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert all(type(m).__name__ != "SelfAttention" for m in model.modules())


def test_each_dtype_has_its_own_copy_sharing_what_it_does_not_convert(model):
    own = {name: p.data_ptr() for name, p in model.named_parameters()}
    fp32 = ovseg.Predictor(model, options=InferenceOptions(channels_last=False)).model
    assert fp32 is not model
    assert {n: p.data_ptr() for n, p in fp32.named_parameters()} == own  # all shared

    bf16 = ovseg.Predictor(model, options=InferenceOptions(dtype="bf16")).model
    # on a CPU the CLIP image tower converts only its products' weights (linear layers,
    # convolutions, attention input projections); its LayerNorms and embeddings stay fp32
    products = set()
    for module_name, module in bf16.clip_adapter.clip_model.visual.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            in_proj = isinstance(module, torch.nn.MultiheadAttention) and param_name.startswith(
                "in_proj_"
            )
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or in_proj:
                prefix = f"clip_adapter.clip_model.visual.{module_name}".rstrip(".")
                products.add(f"{prefix}.{param_name}")
    assert products  # the tower has products to convert
    for name, param in bf16.named_parameters():
        converted = name.startswith(("backbone.", "sem_seg_head.pixel_decoder.")) or (
            name in products
        )
        if converted:
            assert param.dtype == torch.bfloat16, name
        else:  # text tower, decoder, heads, the tower's norms: the caller's fp32 tensors
            assert param.dtype == torch.float32 and param.data_ptr() == own[name], name
    assert bf16.clip_adapter.text_precision == "fp32"

    # the same options share one copy; other options get another
    again = ovseg.Predictor(model, options=InferenceOptions(dtype="bf16")).model
    assert again is bf16
    assert ovseg.Predictor(model).model is not bf16


def test_a_changed_model_gets_a_new_copy(model, image):
    first = ovseg.Predictor(model, options=InferenceOptions(dtype="bf16"))
    with torch.no_grad():
        model.clip_adapter.clip_model.visual.conv1.weight.mul_(2.0)  # e.g. a training step
    second = ovseg.Predictor(model, options=InferenceOptions(dtype="bf16"))
    assert second.model is not first.model
    conv1 = second.model.clip_adapter.clip_model.visual.conv1.weight
    assert torch.equal(conv1, model.clip_adapter.clip_model.visual.conv1.weight.bfloat16())


def test_one_predictor_per_thread_on_a_shared_model(model, image):
    images = [np.roll(image, 7 * i, axis=1) for i in range(4)]
    expected = [_scores(ovseg.Predictor(model), im) for im in images]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        predictor = ovseg.Predictor(model)
        for _ in range(2):
            results[i] = _scores(predictor, images[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert torch.equal(results[i], expected[i]), i


def test_one_predictor_used_by_two_threads_at_once_says_so(model, image):
    entered, release = threading.Event(), threading.Event()

    class SlowGenerator:
        def __call__(self, tensor):
            entered.set()
            release.wait(10)
            return model.propose(tensor)

    predictor = ovseg.Predictor(model, proposal_generator=SlowGenerator())
    worker = threading.Thread(target=predictor.set_image, args=(image,))
    worker.start()
    assert entered.wait(10)
    try:
        with pytest.raises(RuntimeError, match="not thread-safe.*its own Predictor"):
            predictor.predict(CLASSES)
    finally:
        release.set()
        worker.join()
    assert predictor.predict(CLASSES).label_map.shape == image.shape[:2]  # then usable again


def test_text_cache_takes_a_lock(model, monkeypatch):
    """Eight threads asking for overlapping vocabularies while a small bound evicts: an
    unlocked OrderedDict loses entries between its check and its update (KeyError)."""
    clip = model.clip_adapter
    clip.text_cache_dir = None
    clip.text_cache_max_bytes = 8 * 4 * clip.arch.embed_dim * 3  # about 8 vocabularies

    def fake_encode(names, templates, precision):
        return torch.ones(len(names), clip.arch.embed_dim)

    monkeypatch.setattr(clip, "_encode_vocabulary", fake_encode)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(400):
                clip.text_features([f"c{rng.integers(64)}", "a", "b"])
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(clip._text_cache) <= 8
    assert clip._text_cache.nbytes <= clip.text_cache_max_bytes
