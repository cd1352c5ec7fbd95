"""Checkpoints: official OVSeg files, OpenAI/OpenCLIP CLIP weights, and our own format.

Checkpoints are untrusted: ``.pth``/``.pt`` are read with ``torch.load(weights_only=True)``,
our own format is safetensors with the model config as JSON in the file's metadata.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ovseg import timing
from ovseg.fileio import atomic_path, file_identity, ovseg_home
from ovseg.modeling.build import build_ovseg
from ovseg.modeling.clip_branch import ClipArch
from ovseg.modeling.config import OVSegConfig
from ovseg.weights.official_config import config_from_official
from ovseg.weights.official_yaml import read_official_yaml
from ovseg.weights.torchscript import is_torchscript_archive, read_torchscript_state_dict

FORMAT = "ovseg/1"
CLIP_PREFIX = "clip_adapter.clip_model."
# Training-only buffers that official state dicts carry; checked, then set aside.
TRAINING_ONLY = {"criterion.empty_weight"}


@timing.stage("weights_read")
def read_state_dict(path: str | Path, cache: bool = False) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` or a ``.pth``/``.pt`` (bare or ``{"model": ...}``).

    A zip-format ``.pth`` (``torch.save``'s default since PyTorch 1.6) is memory-mapped.
    ``cache=True`` with a legacy-format ``.pth``/``.pt``, which cannot be mapped: the first
    read also writes a safetensors copy to ``ovseg_home()/converted``, which later reads
    memory-map instead of unpickling the file. The copy is valid for the source file's
    resolved path, size and modification time (recorded in its metadata and checked; a content
    hash would cost as much as reading the file); a damaged copy is ignored and rewritten. A
    zip-format file gets no copy: mapped directly it reads as fast as the copy would
    (``benchmarks/README.md``, start-up), without a second file of its size.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if cache and path.suffix != ".safetensors" and not zipfile.is_zipfile(path):
        return _read_through_converted_copy(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = _torch_load(path)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from error
    except Exception as error:  # weights_only refusals raise UnpicklingError and others
        raise ValueError(
            f"{path}: refused or unreadable (only plain tensors are loaded): {error}"
        ) from error
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (bare or under 'model')")
    return obj


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``, memory-mapped for zip-format files (several times
    faster for large checkpoints; tensors are copy-on-write pages of the file), plainly for
    the legacy format, which cannot be mapped."""
    mmap = zipfile.is_zipfile(path)
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


def converted_copy_path(path: str | Path) -> tuple[Path, dict[str, str]]:
    """Where ``read_state_dict(path, cache=True)`` keeps the safetensors copy of ``path``,
    and the metadata that ties it to the source file (path, size, mtime)."""
    import hashlib

    path = Path(path).resolve()
    source = file_identity(path)
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:24]
    return ovseg_home() / "converted" / f"{path.stem}-{digest}.safetensors", source


def note_weights_origin(model, path: str | Path) -> None:
    """Tell ``model``'s CLIP branch that its weights are exactly those of file ``path``, so
    its text-feature cache key comes from the file's identity instead of hashing the text
    tower (``MaskAdaptedCLIP.set_weights_origin``; any later change of the weights drops
    it)."""
    model.clip_adapter.set_weights_origin(json.dumps(file_identity(path), sort_keys=True))


def _read_through_converted_copy(path: Path) -> dict[str, torch.Tensor]:
    copy, source = converted_copy_path(path)
    if copy.is_file():
        try:
            with safe_open(str(copy), framework="pt") as f:
                fresh = f.metadata() == {**source, "format": "converted"}
            if fresh:
                return load_file(str(copy))
        except (SafetensorError, OSError, ValueError):
            pass  # damaged: read the source and write the copy again
    sd = read_state_dict(path)
    seen: set[int] = set()
    tensors = {}
    for key, value in sd.items():  # safetensors stores no shared storage: copy shared ones
        ptr = value.untyped_storage().data_ptr()
        tensors[key] = value.clone().contiguous() if ptr in seen else value.contiguous()
        seen.add(ptr)
    try:
        with atomic_path(copy) as tmp:
            save_file(tensors, str(tmp), metadata={**source, "format": "converted"})
    except (OSError, SafetensorError, ValueError) as error:
        warnings.warn(f"could not keep a safetensors copy of {path}: {error}", stacklevel=3)
    return sd


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` listing missing, unexpected and mis-shaped keys; silent if exact."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if tuple(sd[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        ):
            if items:
                shown = "\n    ".join(items[:50]) + ("\n    ..." if len(items) > 50 else "")
                parts.append(f"  {title} ({len(items)}):\n    {shown}")
        raise ValueError("checkpoint does not fit the model:\n" + "\n".join(parts))


def split_training_only(sd: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Separate the official training-only buffers (``criterion.*``) from model weights."""
    extra = {k: v for k, v in sd.items() if k in TRAINING_ONLY}
    return {k: v for k, v in sd.items() if k not in TRAINING_ONLY}, extra


def load_official_state_dict(
    model, sd: dict[str, torch.Tensor], source="checkpoint", assign: bool = False
) -> dict:
    """Load an official state dict exactly; returns the training-only buffers set aside.

    ``assign=True``: the model takes the state dict's tensors as its own (no copy; tensors
    of another dtype are converted first) - for a freshly built model (``init=False``).
    """
    weights, extra = split_training_only(sd)
    weight = extra.get("criterion.empty_weight")
    if weight is not None and weight.dim() != 1:
        raise ValueError(f"{source}: criterion.empty_weight must be 1-D, got {tuple(weight.shape)}")
    try:
        check_state_dict(model, weights)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    _load(model, weights, assign)
    return extra


def _load(model, sd: dict[str, torch.Tensor], assign: bool) -> None:
    if assign:
        # the model takes these tensors as they are: its own dtype, and a plain contiguous
        # layout (a channels_last tensor would change how its convolutions round)
        own = model.state_dict()
        sd = {k: v.to(own[k].dtype).contiguous() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=assign)


def load_official(
    config: str | Path,
    weights: str | Path,
    cache_converted: bool = False,
    allow_base_outside: bool = False,
):
    """Build and load an official OVSeg model from its detectron2 YAML and checkpoint.

    The CLIP architecture is inferred from the checkpoint's shapes. Keys or shapes that do
    not fit raise ``ValueError`` listing them. ``allow_base_outside``: follow ``_BASE_``
    files outside the config's folder (``read_official_yaml``).
    """
    cfg = read_official_yaml(config, allow_base_outside=allow_base_outside)
    sd = read_state_dict(weights, cache=cache_converted)
    arch = ClipArch.from_state_dict(sd, CLIP_PREFIX)
    ovseg_cfg = config_from_official(cfg, arch)
    ovseg_cfg.prompt_depth = (
        sd[CLIP_PREFIX + "visual.mask_embedding"].shape[0]
        if CLIP_PREFIX + "visual.mask_embedding" in sd
        else 0
    )
    head_dim = cfg.get("MODEL", {}).get("SEM_SEG_HEAD", {}).get("EMBEDDING_DIM", arch.embed_dim)
    if head_dim != arch.embed_dim:
        raise ValueError(
            f"{config}: MODEL.SEM_SEG_HEAD.EMBEDDING_DIM={head_dim} but the checkpoint's CLIP "
            f"embeds to {arch.embed_dim}"
        )
    model = build_ovseg(ovseg_cfg, init=False)
    load_official_state_dict(model, sd, source=weights, assign=True)
    note_weights_origin(model, weights)
    return model.eval()


def save_checkpoint(model, path: str | Path, extra_metadata: dict | None = None) -> Path:
    """Write ``model`` as safetensors with its config in the metadata (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict())}
    if getattr(model, "provenance", None):
        metadata["provenance"] = json.dumps(model.provenance)
    for k, v in (extra_metadata or {}).items():
        metadata[k] = v if isinstance(v, str) else json.dumps(v)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error


def load_checkpoint(path: str | Path, config: dict | None = None):
    """Load a model saved by ``save_checkpoint``: config from the metadata, exact weights.

    ``config``: an ``OVSegConfig.to_dict()`` to build from instead of the metadata's (the
    ``config.json`` of a ``save_pretrained`` folder); the weights must fit it exactly.
    """
    meta = read_metadata(path)
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(
            f"{path}: not an ovseg checkpoint (metadata format {meta.get('format')!r}); for "
            "official .pth files use ovseg.load_official(config, weights)"
        )
    config = json.loads(meta["config"]) if config is None else config
    model = build_ovseg(OVSegConfig.from_dict(config), init=False)
    sd = read_state_dict(path)
    try:
        check_state_dict(model, sd)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    _load(model, sd, assign=True)
    note_weights_origin(model, path)
    model.provenance = json.loads(meta["provenance"]) if "provenance" in meta else {}
    return model.eval()


# Keys every OpenAI/open_clip-layout CLIP state dict has (the shapes give the architecture).
_CLIP_MARKERS = ("visual.conv1.weight", "visual.proj", "token_embedding.weight", "text_projection")


def clip_state_dict(sd: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> dict:
    """The OpenAI-layout CLIP tensors in ``sd``, whichever accepted layout it has.

    Accepted: an OpenAI or open_clip CLIP state dict (the same key names), with or without
    ``visual.mask_embedding`` (mask prompts), its keys optionally under ``module.`` (DDP) or
    ``clip_adapter.clip_model.`` (an OVSeg checkpoint, or the CLIP extracted from one; the
    other OVSeg tensors are then left out). ``{"state_dict": ...}`` / ``{"model": ...}``
    wrappers are removed by ``read_state_dict``. Anything else raises ``ValueError`` naming
    what was found.
    """
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith(CLIP_PREFIX) for k in sd):
        sd = {k[len(CLIP_PREFIX) :]: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}
    missing = [k for k in _CLIP_MARKERS if k not in sd]
    if missing:
        groups: dict[str, int] = {}
        for key in sd:
            head = key.split(".")[0]
            groups[head] = groups.get(head, 0) + 1
        found = ", ".join(f"{h}.* ({n})" for h, n in sorted(groups.items(), key=lambda x: -x[1]))
        hint = ""
        if any(k.startswith("visual.trunk.") for k in sd):
            hint = " (a timm-backbone open_clip model, which OVSeg does not use)"
        elif any(k.startswith("text.") for k in sd):
            hint = " (an open_clip CustomTextCLIP, which OVSeg does not use)"
        raise ValueError(
            f"{source}: not a CLIP state dict{hint}: it lacks {missing}. Found {len(sd)} "
            f"tensors: {found[:400] or 'none'}. Accepted: OpenAI/open_clip CLIP keys "
            f"(visual.conv1.weight, token_embedding.weight, ...), optionally with "
            f"visual.mask_embedding, under {CLIP_PREFIX!r} or 'module.', bare or under "
            "'state_dict'/'model'"
        )
    sd = dict(sd)
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key, None)
    return sd


def read_clip_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """CLIP weights from a file, as an OpenAI-layout dict (see ``clip_state_dict``).

    Reads OpenAI's TorchScript ``.pt`` archives (their tensors only, with a reader that runs
    nothing from the file: ``ovseg.weights.torchscript``), state dicts (``.pth``/``.pt``/
    ``.safetensors``), OVSeg checkpoints (their CLIP part) and the authors' standalone
    mask-adapted CLIP (``ovseg_clip_l_9a1909.pth``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights not found: {path}")
    if is_torchscript_archive(path):
        sd = read_torchscript_state_dict(path)
    else:
        sd = read_state_dict(path)
    return clip_state_dict(sd, source=path)


def clip_prompt_depth(sd: dict[str, torch.Tensor]) -> int:
    """Depth of the mask prompts in an OpenAI-layout CLIP dict (0 when it has none)."""
    prompts = sd.get("visual.mask_embedding")
    return 0 if prompts is None else int(prompts.shape[0])


def load_clip_weights(model, path: str | Path) -> None:
    """Load CLIP weights (any layout of ``clip_state_dict``) into ``model.clip_adapter``.

    Mask prompts (``visual.mask_embedding``) are loaded when the file has them (a
    mask-adapted CLIP); otherwise they keep their initialisation, which is what mask prompt
    tuning trains. The no-object embedding keeps its initialisation.
    """
    sd = {k: v.float() for k, v in read_clip_weights(path).items()}
    arch = ClipArch.from_state_dict(sd)
    if arch != model.clip_adapter.arch:
        raise ValueError(
            f"{path}: CLIP architecture {arch} does not match the model's {model.clip_adapter.arch}"
        )
    clip = model.clip_adapter.clip_model
    own_state = clip.state_dict()
    prompts = sd.get("visual.mask_embedding")
    own_prompts = own_state.get("visual.mask_embedding")
    if prompts is not None and (own_prompts is None or own_prompts.shape != prompts.shape):
        have = "none" if own_prompts is None else tuple(own_prompts.shape)
        raise ValueError(
            f"{path}: has mask prompts of shape {tuple(prompts.shape)}, the model has {have} "
            "(build it with prompt_depth equal to the file's)"
        )
    own = {k for k in own_state if k != "visual.mask_embedding"}
    given = {k for k in sd if k != "visual.mask_embedding"}
    missing, unexpected = sorted(own - given), sorted(given - own)
    if missing or unexpected:
        raise ValueError(
            f"{path}: CLIP keys do not fit: missing {missing[:20]}, unexpected {unexpected[:20]}"
        )
    clip.load_state_dict(sd, strict=False)
