"""The CLIP branch: open_clip towers, mask prompt tuning, and text features.

``MaskAdaptedCLIP`` is what the official checkpoints call ``clip_adapter``:

- ``clip_model``: an open_clip ``CLIP`` (OpenAI layout, QuickGELU, heads = width // 64);
- ``clip_model.visual.mask_embedding``: (depth, grid*grid, width) deep mask prompts;
- ``non_object_embedding``: (1, C) learned "no object" text embedding;
- ``pixel_mean`` / ``pixel_std``: CLIP's normalisation on the 0-255 scale.

``encode_masked`` is the single implementation of mask prompt tuning; inference and
training both call it.
"""

from __future__ import annotations

import copy
import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.tokenizer import tokenize
from torch import nn

from ovseg.data.transforms import CLIP_MEAN, CLIP_STD
from ovseg.digest import tensor_digest
from ovseg.modeling.precision import without_autocast
from ovseg.modeling.prompts import VILD_TEMPLATES
from ovseg.modeling.text_cache import MemoryLRU

LOGIT_TEMPERATURE = 100.0  # fixed; CLIP's own logit_scale is not used
TEXT_BATCH = 4096  # prompts per text-tower call (its prefix tree's memory grows with it)


@dataclass
class ClipArch:
    """CLIP architecture; heads are width // 64 on both towers, as OpenAI's build does."""

    embed_dim: int = 768
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 24
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 768
    text_layers: int = 12

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], prefix: str = "") -> ClipArch:
        """Infer the architecture from OpenAI-layout tensor shapes (never from a model name)."""

        def get(key):
            if prefix + key not in sd:
                raise KeyError(f"CLIP weights lack {prefix + key!r}; not an OpenAI-layout CLIP")
            return sd[prefix + key]

        conv = get("visual.conv1.weight")
        grid = round((get("visual.positional_embedding").shape[0] - 1) ** 0.5)

        def count(tower):
            marker = f"{prefix}{tower}transformer.resblocks."
            return len({k[len(marker) :].split(".")[0] for k in sd if k.startswith(marker)})

        return cls(
            embed_dim=get("text_projection").shape[1],
            image_size=conv.shape[-1] * grid,
            patch_size=conv.shape[-1],
            vision_width=conv.shape[0],
            vision_layers=count("visual."),
            context_length=get("positional_embedding").shape[0],
            vocab_size=get("token_embedding.weight").shape[0],
            text_width=get("ln_final.weight").shape[0],
            text_layers=count(""),
        )


def patch_keep_flags(region_masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-patch keep flag: 1 where any pixel of the patch is inside the mask.

    Args:
        region_masks: (B, 1, S, S) masks in {0, 1} at the CLIP input size.
    Returns:
        (B, grid*grid, 1) float flags, row-major over patches.
    """
    pooled = F.avg_pool2d(region_masks.float(), patch_size, patch_size)
    return torch.ceil(pooled).clamp(max=1).flatten(1).unsqueeze(-1)


class QuickGELU(nn.Module):
    """open_clip's ``QuickGELU``, ``x * sigmoid(1.702 * x)``, with the same values; without
    autograd it makes one temporary instead of three (the towers' MLPs are memory-bound
    there: about a tenth of the CLIP image tower's time on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return x * torch.sigmoid(1.702 * x)
        return torch.sigmoid_(x * 1.702).mul_(x)


QUICK_GELU = 1.702  # QuickGELU(x) = x * sigmoid(1.702 x) = SiLU(1.702 x) / 1.702


def fused_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` (OpenAI layout: no layer scale, QuickGELU,
    batch first) on x (B, T, D), the same computation in fewer passes over memory.

    - attention: scaled-dot-product attention on views of the input projection (no separate
      q/k/v copies; ``nn.MultiheadAttention``'s inference path copies them);
    - MLP: QuickGELU(h) = SiLU(1.702 h) / 1.702, with the 1.702 applied by the ``c_fc``
      product itself (its alpha, and the bias scaled) and the 1 / 1.702 by ``c_proj``'s, so
      the activation is one in-place SiLU pass instead of three passes over the 4D-wide
      hidden (the element-wise kernels, not the products, held the CLIP tower back on GPUs).

    Equal to ``block(x)`` up to float rounding.
    """
    b, t, d = x.shape
    attn = block.attn
    heads = attn.num_heads
    y = block.ln_1(x)
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
    x = x + F.linear(o, attn.out_proj.weight, attn.out_proj.bias)
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    y = block.ln_2(x).reshape(b * t, d)
    h = torch.addmm(fc.bias * QUICK_GELU, y, fc.weight.t(), alpha=QUICK_GELU)
    h = F.silu(h, inplace=True)
    return x + torch.addmm(proj.bias, h, proj.weight.t(), alpha=1 / QUICK_GELU).view(b, t, d)


def fusable(block: nn.Module) -> bool:
    """Whether ``fused_block`` computes ``block`` (float linear layers, no layer scale, batch
    first, QuickGELU)."""
    mlp = getattr(block, "mlp", None)
    return (
        isinstance(getattr(block, "attn", None), nn.MultiheadAttention)
        and block.attn.batch_first
        and block.attn._qkv_same_embed_dim
        and isinstance(block.ls_1, nn.Identity)
        and isinstance(block.ls_2, nn.Identity)
        and not hasattr(block, "ln_1_kv")
        and mlp is not None
        and type(mlp.c_fc) is nn.Linear
        and type(mlp.c_proj) is nn.Linear
        and isinstance(mlp.gelu, QuickGELU)
    )


def _use_own_quick_gelu(module: nn.Module) -> None:
    from open_clip.transformer import QuickGELU as OpenClipQuickGELU

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, OpenClipQuickGELU):
                setattr(parent, name, QuickGELU())


class MaskAdaptedCLIP(nn.Module):
    """CLIP with mask prompts, plus the no-object embedding used for classification.

    Args:
        arch: the CLIP architecture.
        prompt_depth: number of deep mask prompts (0 disables mask prompt tuning).
    """

    def __init__(self, arch: ClipArch, prompt_depth: int = 3):
        super().__init__()
        self.arch = arch
        self.prompt_depth = prompt_depth
        self.clip_model = CLIP(
            arch.embed_dim,
            CLIPVisionCfg(
                layers=arch.vision_layers,
                width=arch.vision_width,
                patch_size=arch.patch_size,
                image_size=arch.image_size,
            ),
            CLIPTextCfg(
                context_length=arch.context_length,
                vocab_size=arch.vocab_size,
                width=arch.text_width,
                heads=arch.text_width // 64,
                layers=arch.text_layers,
            ),
            quick_gelu=True,
        )
        _use_own_quick_gelu(self.clip_model)
        if prompt_depth > 0:
            prompts = torch.empty(prompt_depth, arch.grid**2, arch.vision_width)
            self.clip_model.visual.mask_embedding = nn.Parameter(nn.init.normal_(prompts, std=0.02))
        self.non_object_embedding = nn.Parameter(
            nn.init.normal_(torch.empty(1, arch.embed_dim), std=arch.embed_dim**-0.5)
        )
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255.0)
        # shared by the prepared copies of this model (ovseg.inference.prepare.prepare_model),
        # bounded by bytes (text_cache_max_bytes), thread-safe
        self._text_cache = MemoryLRU()
        self.text_cache_max_bytes: int | None = None  # None: max_bytes_from() (env / default)
        self._fingerprint: tuple | None = None
        self._int8_text: tuple | None = None
        self.text_precision = "fp32"  # "fp32", "bf16", "fp16" or "int8" (prepare_model)
        # the image tower's mixed precision (set by prepare_model): None runs every op in
        # its weights' dtype; a dtype (bf16) runs encode_masked under autocast with the
        # residual stream, LayerNorms and embeddings in fp32 and the products in that dtype
        self.image_autocast: torch.dtype | None = None
        # the image tower's blocks through ``fused_block`` (set by prepare_model: bf16 / fp16
        # on CUDA)
        self.fused_blocks = False
        self.text_cache_dir: Path | None = None  # on-disk text cache (None: memory only)
        self.last_text_stats: dict = {}

    # ---- image side -------------------------------------------------------------------
    def encode_masked(
        self, images: torch.Tensor, region_masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode CLIP-normalised crops, replacing fully masked-out patches by prompts.

        Args:
            images: (B, 3, S, S) crops normalised with CLIP's mean/std (S = arch.image_size).
            region_masks: (B, 1, S, S) binary region masks, or None for plain CLIP.
        Returns:
            (B, C) image features (not normalised).
        """
        visual = self.clip_model.visual
        mixed = self.image_autocast is not None
        autocast = (
            torch.autocast(images.device.type, self.image_autocast) if mixed else nullcontext()
        )
        with autocast:
            x = visual.conv1(images.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
            if mixed:  # the residual stream stays fp32
                x = x.float()
            prompts = getattr(visual, "mask_embedding", None) if region_masks is not None else None
            if prompts is not None:
                keep = patch_keep_flags(region_masks, self.arch.patch_size).to(x.dtype)
                x = x * keep + prompts[0].to(x.dtype) * (1 - keep)
            cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
            x = visual.ln_pre(visual.patch_dropout(x))
            fused = self.fused_blocks
            for depth, block in enumerate(visual.transformer.resblocks, start=1):
                x = fused_block(block, x) if fused else block(x)
                if prompts is not None and depth < prompts.shape[0]:
                    patches = x[:, 1:] * keep + prompts[depth].to(x.dtype) * (1 - keep)
                    x = torch.cat([x[:, :1], patches], dim=1)
            return visual.ln_post(x[:, 0]) @ visual.proj

    # ---- text side --------------------------------------------------------------------
    def _text_params(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.named_parameters() if not n.startswith("clip_model.visual.")}

    def _weights_state(self, params: dict[str, torch.Tensor]) -> tuple:
        # inference tensors (made under torch.inference_mode) track no version: keyed by
        # storage and dtype only
        return tuple(
            (p.data_ptr(), -1 if p.is_inference() else p._version, p.dtype) for p in params.values()
        )

    def weights_fingerprint(self) -> str:
        """Digest of the text tower's and no-object weights (the text-feature cache key).

        The sha256 of the tensors, recomputed only when they change; or, while the weights
        are still exactly those a loader read from a file (``set_weights_origin``), a digest
        of that file's identity, which costs nothing.
        """
        params = self._text_params()
        state = self._weights_state(params)
        if self._fingerprint is None or self._fingerprint[0] != state:
            self._fingerprint = (state, tensor_digest(params))
        return self._fingerprint[1]

    def set_weights_origin(self, origin: str) -> None:
        """Record that the current weights are exactly those of ``origin`` (a loader's
        description of the file: path, size, modification time). Any later change of the
        text-side tensors (new storage or an in-place update) falls back to hashing them."""
        params = self._text_params()
        digest = hashlib.sha256(f"file|{origin}".encode()).hexdigest()
        self._fingerprint = (self._weights_state(params), digest)

    @torch.no_grad()
    def text_features(
        self, class_names: list[str], templates: tuple[str, ...] = VILD_TEMPLATES
    ) -> torch.Tensor:
        """(K, C) normalised class embeddings: each template normalised, averaged, normalised.

        Cached in memory under (weights fingerprint, names, templates, precision, device),
        and on disk too when ``text_cache_dir`` is set (``ovseg.modeling.text_cache``; the
        ``Predictor`` sets it): repeated vocabularies cost nothing, even in a new process,
        and changed weights never hit a stale entry. All prompts (every template of every
        class) go through the tower in a few batches of similar length, in the precision
        ``text_precision`` ("fp32", "bf16" or "fp16" autocast, or "int8"; set by
        ``prepare_model``).
        ``last_text_stats`` says where the last result came from and how long it took.
        """
        from ovseg.modeling import text_cache

        start = time.perf_counter()
        device = self.non_object_embedding.device
        precision = self.text_precision
        fingerprint = self.weights_fingerprint()
        digest_s = time.perf_counter() - start
        names, templates = tuple(class_names), tuple(templates)
        key = (fingerprint, names, templates, precision, str(device))
        folder = self.text_cache_dir
        max_bytes = self.text_cache_max_bytes
        if max_bytes is None:
            max_bytes = text_cache.max_bytes_from()
        feats, source = self._text_cache.get(key), "memory"
        if feats is None:
            if folder is not None:
                feats = text_cache.load(folder, fingerprint, templates, precision, names)
            source = "disk"
            if feats is None:
                feats, source = self._encode_vocabulary(names, templates, precision), "computed"
                if folder is not None:
                    text_cache.store(
                        folder, fingerprint, templates, precision, names, feats, max_bytes
                    )
            feats = feats.to(device)
            self._text_cache.put(key, feats, max_bytes)
        self.last_text_stats = {
            "source": source,
            "seconds": time.perf_counter() - start,
            "weights_digest_s": digest_s,  # sha256 once per process and weights; ~0 if loaded
            "classes": len(names),
            "templates": len(templates),
            "precision": precision,
        }
        return feats

    def _encode_vocabulary(self, names, templates, precision: str) -> torch.Tensor:
        """(K, C) text features, computed: all K * T prompts in calls of at most
        ``TEXT_BATCH`` prompts (every template of a group of names), each call encoding
        every distinct prompt prefix once (``ovseg.modeling.text_tower``)."""
        from ovseg.modeling.text_tower import encode_prompts

        device = self.non_object_embedding.device
        transformer = self._text_transformer(precision)
        feats = torch.empty(len(templates), len(names), self.arch.embed_dim)
        step = max(1, TEXT_BATCH // len(templates))
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        autocast = torch.autocast(device.type, low or torch.bfloat16, enabled=low is not None)
        with autocast:
            for i in range(0, len(names), step):
                group = names[i : i + step]
                prompts = [t.format(name) for t in templates for name in group]
                tokens = tokenize(prompts, context_length=self.arch.context_length)
                encoded = encode_prompts(self.clip_model, tokens.to(device), transformer)
                feats[:, i : i + len(group)] = (
                    encoded.float().cpu().view(len(templates), -1, feats.shape[-1])
                )
        return F.normalize(F.normalize(feats, dim=-1).mean(0), dim=-1)

    def _text_transformer(self, precision: str) -> nn.Module:
        """The text tower's transformer for ``precision``: int8 is a quantised copy, made
        once per weights fingerprint (the fp32 weights stay for training and export)."""
        if precision != "int8":
            return self.clip_model.transformer
        fingerprint = self.weights_fingerprint()
        with self._text_cache.lock:  # one quantised copy, whichever thread asks first
            return self._int8_transformer(fingerprint)

    def _int8_transformer(self, fingerprint: str) -> nn.Module:
        if self._int8_text is None or self._int8_text[0] != fingerprint:
            from ovseg.modeling.int8 import quantize_int8

            # per-row activation scales (torchao): one scale per tensor over every prompt
            # prefix (fbgemm) moved official-tiny's class features 0.17 instead of 0.10
            tower = copy.deepcopy(self.clip_model.transformer).cpu()
            quantized = quantize_int8(tower, backend="torchao")
            self._int8_text = (fingerprint, quantized)
        return self._int8_text[1]

    def with_void(self, text_features: torch.Tensor) -> torch.Tensor:
        """Append the normalised no-object embedding: (K, C) -> (K+1, C)."""
        void = F.normalize(self.non_object_embedding.float(), dim=-1)
        return torch.cat([text_features.float(), void], dim=0)

    @staticmethod
    def similarity_logits(features: torch.Tensor, text_with_void: torch.Tensor) -> torch.Tensor:
        """100 * normalize(features) @ text.T: (N, C), (K+1, C) -> (N, K+1), in fp32 also
        under autocast (fp16 would round logits of magnitude 32-100 to steps of 1/32-1/16)."""
        with without_autocast(features.device):
            return (
                LOGIT_TEMPERATURE * F.normalize(features.float(), dim=-1) @ text_with_void.T.float()
            )
