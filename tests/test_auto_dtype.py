"""``dtype="auto"``: the rule table on faked capability sets, and auto resolving to an
explicit path that runs."""

from __future__ import annotations

import copy

import pytest
import torch

from ovseg import InferenceOptions
from ovseg.inference import auto
from ovseg.inference.prepare import prepare_model

AVX2 = ["avx2"]
AVX512_BF16_VNNI = ["avx2", "avx512_bf16", "avx512_vnni"]  # the AMD EPYC of round five


def test_capabilities_read_from_cpu_flags(monkeypatch):
    flags = {"fpu", "sse2", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "fma"}
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert auto.cpu_capabilities(flags) == AVX512_BF16_VNNI
    # oneDNN held at AVX2 computes like an AVX2 CPU
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert auto.cpu_capabilities(flags) == AVX2


def test_capabilities_of_this_machine_are_known_flags():
    caps = auto.capabilities("cpu")
    assert caps == sorted(caps) and set(caps) <= set(auto.KNOWN) and "cuda" not in caps
    with open("/proc/cpuinfo") as f:
        line = next((x for x in f if x.startswith("flags")), "")
    if "avx2" in line.split():
        assert "avx2" in caps


@pytest.mark.parametrize(
    ("device", "caps", "chosen", "text"),
    [
        ("cpu", AVX2, "int8/fbgemm", "fp32"),  # the issue: AVX2-only picks int8
        ("cpu", AVX512_BF16_VNNI, "int8/fbgemm", "fp32"),  # measured in round five
        ("cpu", ["avx2", "avx512_bf16"], "bf16/torch", "fp32"),
        ("cpu", ["avx2", "avx512_vnni"], "int8/fbgemm", "fp32"),
        (
            "cpu",
            ["avx2", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni"],
            "int8/fbgemm",
            "fp32",
        ),
        ("cpu", [], "fp32/torch", "fp32"),
        ("cuda", AVX2 + ["cuda"], "bf16/torch", "bf16"),
    ],
)
def test_rule_table_on_faked_capabilities(device, caps, chosen, text):
    rule = auto.choose(device, caps)
    assert (rule.chosen, rule.text_dtype) == (chosen, text)
    assert rule.evidence


def test_rules_fall_back_to_torchao_without_the_deprecated_api(monkeypatch):
    from ovseg.modeling import int8_fbgemm

    monkeypatch.setattr(int8_fbgemm, "available", lambda: False)
    assert auto.choose("cpu", AVX2).chosen == "int8/torchao"
    assert auto.chosen("int8") == "int8/torchao"


def test_rule_table_is_first_match_and_covers_every_cpu():
    # no row hides behind an earlier one that needs a subset of its flags (it would never
    # be reached), and the last CPU row needs nothing (every CPU gets a path)
    for i, later in enumerate(auto.AUTO_RULES):
        for earlier in auto.AUTO_RULES[:i]:
            assert not (earlier.device == later.device and earlier.needs <= later.needs), (
                f"{later} is unreachable behind {earlier}"
            )
    assert auto.AUTO_RULES[-1].needs == frozenset() and auto.AUTO_RULES[-1].device == "cpu"


def test_auto_options_resolve_to_an_explicit_path(monkeypatch):
    monkeypatch.setattr(auto, "capabilities", lambda device="cpu": AVX2)
    options = InferenceOptions(dtype="auto")
    assert options.text_dtype == "auto"  # follows dtype when left unset
    assert InferenceOptions(dtype="int8").text_dtype == "fp32"  # the default otherwise
    resolved = options.resolved("cpu")
    assert (resolved.dtype, resolved.text_dtype) == ("int8", "fp32")
    assert options.choice("cpu") == {
        "requested": "auto",
        "cpu_capabilities": AVX2,
        "chosen": "int8/fbgemm",
        "text_dtype": "fp32",
    }
    explicit = InferenceOptions(dtype="bf16")
    assert explicit.resolved("cpu") is explicit
    with pytest.raises(ValueError, match="auto"):
        InferenceOptions(dtype="fastest")
    with pytest.raises(ValueError, match="resolved"):
        _ = options.torch_dtype


@torch.no_grad()
def test_auto_runs_the_path_it_names(monkeypatch, official_tiny):
    """A model prepared with dtype auto is the model prepared with the explicit dtype auto
    picked: same layers, same outputs."""
    monkeypatch.setattr(auto, "capabilities", lambda device="cpu": AVX2)
    model, _, image, names = official_tiny
    by_auto = prepare_model(copy.deepcopy(model), InferenceOptions(dtype="auto", text_cache=False))
    explicit = prepare_model(
        copy.deepcopy(model),
        InferenceOptions(dtype="int8", text_dtype="fp32", int8_backend="fbgemm", text_cache=False),
    )
    assert by_auto.clip_adapter.text_precision == "fp32"
    assert torch.equal(by_auto(image, names), explicit(image, names))
