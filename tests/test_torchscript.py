"""TorchScript archives (OpenAI's CLIP ``.pt``) are read for their tensors, and nothing from
the file runs: compared with ``torch.jit.load`` (run here only on files the test made)."""

from __future__ import annotations

import collections
import io
import pickle
import warnings
import zipfile

import pytest
import torch
from torch import nn

from ovseg.modeling.clip_branch import ClipArch, MaskAdaptedCLIP
from ovseg.weights.checkpoints import read_clip_weights
from ovseg.weights.torchscript import is_torchscript_archive, read_torchscript_state_dict

ARCH = ClipArch(
    embed_dim=32,
    image_size=32,
    patch_size=16,
    vision_width=64,
    vision_layers=2,
    context_length=77,
    vocab_size=49408,
    text_width=64,
    text_layers=2,
)
MARK = "ovseg-test: load-time code of the archive ran"


class Marker(nn.Module):
    """A module whose ``__setstate__`` (TorchScript, run by ``torch.jit.load``) prints."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        print("ovseg-test: load-time code of the archive ran")
        self.w = state[0]
        self.training = state[1]

    def forward(self, x):
        return x * self.w.sum()


def _openai_like_clip() -> nn.Module:
    """A small CLIP with the tensors OpenAI's archives hold: fp16 weights, the OpenAI key
    names, the causal mask as a plain attribute, and the three scalar buffers."""
    torch.manual_seed(0)
    clip = MaskAdaptedCLIP(ARCH, prompt_depth=0).clip_model.eval().half()
    mask = clip.attn_mask
    del clip._buffers["attn_mask"]
    clip.attn_mask = mask
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(clip, name):
            delattr(clip, name)
        clip.register_buffer(name, torch.tensor(value))
    return clip


def _save_scripted(module: nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), str(path))


def _jit_state_dict(path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").state_dict()


@pytest.fixture(scope="module")
def clip_archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "ViT-T-16.pt"
    _save_scripted(_openai_like_clip(), path)
    return path


def test_tensors_equal_what_torch_jit_load_gives(clip_archive):
    assert is_torchscript_archive(clip_archive)
    ours = read_torchscript_state_dict(clip_archive)
    theirs = _jit_state_dict(clip_archive)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    assert "attn_mask" not in ours  # a plain attribute, not a parameter or buffer
    assert ours["visual.conv1.weight"].dtype == torch.float16


def test_clip_only_model_from_an_archive(clip_archive):
    from ovseg.weights import build_clip_only

    model = build_clip_only(clip_archive)
    expected = _jit_state_dict(clip_archive)
    own = model.clip_adapter.clip_model.state_dict()
    assert torch.equal(own["visual.proj"], expected["visual.proj"].float())
    assert torch.equal(own["token_embedding.weight"], expected["token_embedding.weight"].float())


def test_load_time_code_never_runs(tmp_path, capfd):
    clip = _openai_like_clip()
    clip.marker = Marker()
    path = tmp_path / "marked.pt"
    _save_scripted(clip, path)
    capfd.readouterr()

    _jit_state_dict(path)  # the control: torch.jit.load runs the archive's code
    assert MARK in capfd.readouterr().out

    sd = read_clip_weights(path)
    from ovseg.weights import build_clip_only

    build_clip_only(path)
    captured = capfd.readouterr()
    assert MARK not in captured.out + captured.err
    assert "marker.w" not in sd  # its state is opaque (its own __getstate__): left out
    assert "visual.conv1.weight" in sd


def _archive(tmp_path, data_pkl: bytes, records: dict[str, bytes] | None = None):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", data_pkl)
        z.writestr("evil/code/__torch__.py", "class M(Module):\n  __parameters__ = []\n")
        z.writestr("evil/version", "3\n")
        for key, value in (records or {}).items():
            z.writestr(f"evil/data/{key}", value)
    return path


class _System:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_data_pkl_asking_for_other_globals_is_refused(tmp_path, capfd):
    path = _archive(tmp_path, pickle.dumps({"x": _System()}, protocol=2))
    with pytest.raises(ValueError, match="refused posix.system|refused os.system"):
        read_torchscript_state_dict(path)
    assert "pwned" not in capfd.readouterr().out


class _Storage:
    """Pickled as the persistent id of storage record 0 (4 floats)."""


class _Tensor:
    def __init__(self, size, stride, offset=0):
        self.args = (_Storage(), offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        import torch._utils

        return (torch._utils._rebuild_tensor_v2, self.args)


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, "0", "cpu", 4)
        return None


def _data_pkl(obj) -> bytes:
    buffer = io.BytesIO()
    _ArchivePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "tensor, words",
    [
        (_Tensor((10,), (1,)), "outside its storage"),
        (_Tensor((2,), (1,), offset=3), "outside its storage"),
        (_Tensor((2, 2), (-1, 1)), "outside its storage"),
    ],
)
def test_a_tensor_view_past_its_storage_is_refused(tmp_path, tensor, words):
    records = {"0": torch.zeros(4).numpy().tobytes()}
    path = _archive(tmp_path, _data_pkl({"w": _Tensor((4,), (1,))}), records)
    read_torchscript_state_dict(path)  # a view inside its storage is fine
    path = _archive(tmp_path, _data_pkl({"w": tensor}), records)
    with pytest.raises(ValueError, match=words):
        read_torchscript_state_dict(path)


def test_a_storage_of_the_wrong_size_is_refused(tmp_path):
    path = _archive(tmp_path, _data_pkl({"w": _Tensor((4,), (1,))}), {"0": b"\0" * 12})
    with pytest.raises(ValueError, match="12 bytes, but 4 x 4-byte"):
        read_torchscript_state_dict(path)
