"""``dtype="auto"``: the fastest path this machine runs within the agreement targets.

The machine's capabilities (``capabilities``: CPU flags that decide which kernels are native,
and CUDA) select the first matching row of ``AUTO_RULES``, the one rule table. Each row was
measured (``benchmarks/latency.py`` and ``benchmarks/text_features.py``; the table and the
figures behind each row are in ``benchmarks/README.md``, "Round five"): the image side's
precision and backend, and the text tower's precision (the fastest whose text features stay
within cosine 0.9999 of fp32 without costing agreement: bf16 text passed the cosine, 0.99997,
but cost 4 points of agreement on the AVX512-BF16 host, so CPUs keep fp32 text).

The default stays ``dtype="fp32"``, the official computation; ``auto`` is opt-in.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

# the CPU flags (``/proc/cpuinfo`` names) that decide a precision's speed, and "cuda"
KNOWN = ("amx_bf16", "amx_int8", "avx2", "avx512_bf16", "avx512_vnni", "avx_vnni", "cuda")
_AVX512_OR_AMX = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni")
# ONEDNN_MAX_CPU_ISA values that stop oneDNN (PyTorch's bf16 and int8 kernels) short of
# AVX512: the machine then computes like an AVX2 one
_BELOW_AVX512 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")


@dataclass(frozen=True)
class Rule:
    """One row of ``AUTO_RULES``: on ``device``, with every flag of ``needs``, run the image
    side in ``dtype`` on ``backend`` and the text tower in ``text_dtype``."""

    device: str
    needs: frozenset[str]
    dtype: str
    backend: str
    text_dtype: str
    evidence: str

    def matches(self, device: str, caps: set[str] | frozenset[str]) -> bool:
        return self.device == device and self.needs <= set(caps)

    @property
    def chosen(self) -> str:
        """``"dtype/backend"``, e.g. ``"int8/torchao"`` (what latency.py and --timings record)."""
        return f"{self.dtype}/{self.backend}"


def _rule(device, needs, dtype, backend, text_dtype, evidence) -> Rule:  # one table row
    return Rule(device, frozenset(needs), dtype, backend, text_dtype, evidence)


# First match wins. Keep benchmarks/README.md ("Round five", the auto table) in step.
AUTO_RULES: tuple[Rule, ...] = (
    _rule(
        "cuda", (), "bf16", "torch", "bf16",
        "H200: bf16 3.5-6x fp32, 98.2-99.9% agreement (issue 21's GPU run)",
    ),
    _rule(
        "cpu", ("avx512_vnni", "avx512_bf16"), "int8", "fbgemm", "fp32",
        "AVX512-BF16 + VNNI, idle: int8 (fbgemm) 2.88x the reference, bf16 2.09x; torchao "
        "0.5-0.85x fbgemm's speed on the tower. Text fp32: bf16 text (cosine 0.99997, 3.3 "
        "s vs 5.6 s) cost 4 points of agreement, 94.3% vs 98.4% (round five)",
    ),
    _rule(
        "cpu", ("amx_int8", "amx_bf16"), "int8", "fbgemm", "fp32",
        "AMX: not measured; int8 and bf16 AMX tiles as on VNNI + BF16",
    ),
    _rule(
        "cpu", ("avx512_bf16",), "bf16", "torch", "fp32",
        "native bf16 without VNNI: bf16 matmuls at 2x fp32 (round one)",
    ),
    _rule(
        "cpu", ("avx512_vnni",), "int8", "fbgemm", "fp32",
        "VNNI without native bf16: int8 as on VNNI + BF16; emulated bf16 text is slow",
    ),
    _rule(
        "cpu", ("avx2",), "int8", "fbgemm", "fp32",
        "AVX2: int8 (fbgemm) 1.86-2.1x end to end, bf16 emulated ~100x slower than fp32 "
        "(rounds 2-4); int8 text features miss cosine 0.9999",
    ),
    _rule("cpu", (), "fp32", "torch", "fp32", "no vector extension that helps: fp32"),
)  # fmt: skip


def cpu_capabilities(flags: set[str] | None = None) -> list[str]:
    """The ``KNOWN`` CPU flags of this machine, sorted (e.g. ``["avx2", "avx512_bf16",
    "avx512_vnni"]``).

    ``flags``: the CPU's flags (default: ``/proc/cpuinfo``). ``ONEDNN_MAX_CPU_ISA`` set below
    AVX512 (``AVX2``...) drops the AVX512 and AMX flags, as oneDNN then does not use them.
    """
    if flags is None:
        flags = _proc_cpu_flags()
    caps = {f for f in flags if f in KNOWN and f != "cuda"}
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _BELOW_AVX512:
        caps -= set(_AVX512_OR_AMX)
    return sorted(caps)


def capabilities(device: torch.device | str = "cpu") -> list[str]:
    """``cpu_capabilities()``, plus ``"cuda"`` when ``device`` is a CUDA device."""
    caps = cpu_capabilities()
    if torch.device(device).type == "cuda":
        caps.append("cuda")
    return sorted(caps)


def choose(device: torch.device | str, caps: list[str] | set[str] | None = None) -> Rule:
    """The first rule of ``AUTO_RULES`` for ``device`` (its type) and ``caps`` (default: this
    machine's ``capabilities``)."""
    kind = torch.device(device).type
    caps = set(capabilities(device) if caps is None else caps)
    for rule in AUTO_RULES:
        if rule.matches(kind, caps):
            return _available(rule)
    raise ValueError(f"dtype='auto' has no rule for device {kind!r}; use an explicit dtype")


def chosen(dtype: str, int8_backend: str = "auto") -> str:
    """``"dtype/backend"`` for an explicit ``dtype`` (int8: the backend ``int8_backend``
    resolves to here)."""
    if dtype != "int8":
        return f"{dtype}/torch"
    from ovseg.modeling.int8 import int8_backend as resolve

    return f"int8/{resolve(int8_backend)}"


def _available(rule: Rule) -> Rule:
    """``rule``, on torchao where it names fbgemm and this PyTorch no longer has it."""
    if rule.backend != "fbgemm":
        return rule
    from ovseg.modeling.int8_fbgemm import available

    return rule if available() else dataclasses.replace(rule, backend="torchao")


def _proc_cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        line = ""
    if line:
        return set(line.split(":", 1)[1].split())
    # no /proc (not Linux): what PyTorch's own dispatch found
    capability = torch.backends.cpu.get_cpu_capability()
    return {"avx2"} | ({"avx512f"} if capability in ("AVX512", "AMX") else set())
