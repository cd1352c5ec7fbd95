"""The CLIP branch's image side of ``OVSeg``: masked crops of binarised proposals, encoded.

``ClipImageSide`` is a part of ``OVSeg`` (its methods use the model's ``config``, ``device``
and ``clip_adapter``), kept in its own file: binarise, skip empty and duplicate masks, crop
(``ovseg.data.masked_crops``), encode (``MaskAdaptedCLIP.encode_masked``), for one image or
several images whose crops go through the encoder together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ovseg.data.fast_crops import unique_masks
from ovseg.data.masked_crops import MEAN_FILL, MaskedCrops, masked_crops_many
from ovseg.modeling.classify import ClipImageFeatures

Encoder = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class ClipImageSide:
    """Mixed into ``OVSeg``: the vocabulary-free image side of the CLIP branch."""

    def clip_image_features(
        self,
        image: torch.Tensor,
        masks: torch.Tensor,
        mask_threshold: float | None = None,
        fast: bool = False,
        encoder: Encoder | None = None,
        batch_size: int = 0,
    ) -> ClipImageFeatures:
        """Encode the masked crops of ``masks > mask_threshold``.

        Args:
            image: (3, H, W) 0-255 model input. masks: (N, H, W) in [0, 1].
            fast: empty and duplicate binary masks skipped (identical masks encoded once),
                batched crops on CUDA (the outputs equal the reference path up to float
                rounding); False: the reference path.
            encoder: ``(crops (B, 3, S, S), region_masks (B, 1, S, S) or None) -> (B, C)``;
                default ``clip_adapter.encode_masked`` (e.g. an onnxruntime session instead).
            batch_size: crops per encoder call; 0 means all in one call.
        """
        return self.clip_image_features_batch(
            [image], [masks], mask_threshold, fast, encoder, batch_size
        )[0]

    def clip_image_features_batch(
        self,
        images: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        mask_threshold: float | None = None,
        fast: bool = False,
        encoder: Encoder | None = None,
        batch_size: int = 0,
    ) -> list[ClipImageFeatures]:
        """``clip_image_features`` of several images: the crops of all of them are made
        together (on CUDA, fast path) and go through the encoder together (in calls of
        ``batch_size``; 0: one call). Per image, the features equal those of
        ``clip_image_features`` up to float rounding.

        Args:
            images: (3, H_i, W_i) 0-255 model inputs. masks: (N_i, H_i, W_i) per image.
        """
        crops, counts, valids, inverses = self.clip_crops_many(images, masks, mask_threshold, fast)
        features = self.encode_crops(crops, encoder, batch_size)
        out, start = [], 0
        for n, valid, inverse in zip(counts, valids, inverses):
            own = features[start : start + n]
            start += n
            out.append(ClipImageFeatures(own if inverse is None else own[inverse], valid))
        return out

    def encode_crops(
        self,
        crops: MaskedCrops,
        encoder: Encoder | None = None,
        batch_size: int = 0,
    ) -> torch.Tensor:
        """(V, C) float CLIP-branch features (not normalised) of ``crops``; mask prompts are
        used when the config says so (``mask_prompt_fwd``). Arguments as in
        ``clip_image_features``."""
        n = crops.crops.shape[0]
        if n == 0:
            return crops.crops.new_zeros(0, self.config.clip.embed_dim)
        encoder = self.clip_adapter.encode_masked if encoder is None else encoder
        region = crops.region_masks if self.config.mask_prompt_fwd else None
        step = batch_size if batch_size > 0 else n
        return torch.cat(
            [
                encoder(crops.crops[i : i + step], None if region is None else region[i : i + step])
                for i in range(0, n, step)
            ]
        ).float()

    def binary_crops(
        self, image: torch.Tensor, binary: torch.Tensor, method: str = "reference"
    ) -> MaskedCrops:
        """``masked_crops`` of (N, H, W) bool masks with this model's CLIP-branch settings
        (input size, fill, box expansion)."""
        return self.binary_crops_many([image], [binary], method)[0]

    def binary_crops_many(
        self, images: Sequence[torch.Tensor], binaries: Sequence[torch.Tensor], method: str
    ) -> tuple[MaskedCrops, list[int]]:
        """``masked_crops_many`` of several images' (N_i, H_i, W_i) bool masks with this
        model's CLIP-branch settings: the one place those settings are read."""
        cfg = self.config
        fill = MEAN_FILL if cfg.mask_fill == "mean" else (0.0, 0.0, 0.0)
        images = [image.to(self.device) for image in images]
        return masked_crops_many(
            images, binaries, cfg.clip.image_size, fill, cfg.mask_expand_ratio, method
        )

    def clip_crops(
        self,
        image: torch.Tensor,
        masks: torch.Tensor,
        mask_threshold: float | None = None,
        fast: bool = False,
        crop_method: str | None = None,
    ) -> tuple[MaskedCrops, torch.Tensor, torch.Tensor | None]:
        """The masked crops of ``masks > mask_threshold`` (see ``clip_image_features``).

        ``crop_method`` (fast path only): ``masked_crops`` method; None picks "fast" (batched
        tensor ops) on CUDA and "reference" (the per-mask loop, faster there) on CPU.

        Returns:
            ``(crops, valid (N,) bool, inverse)``. Reference path: ``crops`` of the V valid
            masks, ``inverse`` None. Fast path: ``crops`` of the U distinct valid masks and
            ``inverse`` (V,) mapping each valid mask to its crop.
        """
        crops, _, valids, inverses = self.clip_crops_many(
            [image], [masks], mask_threshold, fast, crop_method
        )
        return crops, valids[0], inverses[0]

    def clip_crops_many(
        self,
        images: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        mask_threshold: float | None = None,
        fast: bool = False,
        crop_method: str | None = None,
    ) -> tuple[MaskedCrops, list[int], list[torch.Tensor], list[torch.Tensor | None]]:
        """``clip_crops`` of several images, the crops made together: ``(crops, counts,
        valids, inverses)`` with image 0's crops first in ``crops``, ``counts[i]`` crops of
        image i, and per image ``valid`` and ``inverse`` as ``clip_crops`` returns them."""
        thr = self.config.mask_threshold if mask_threshold is None else mask_threshold
        images = [image.to(self.device) for image in images]
        binaries = [m.to(self.device) > thr for m in masks]
        if not fast:
            crops, counts = self.binary_crops_many(images, binaries, "reference")
            valids = list(crops.valid.split([len(b) for b in binaries]))
            return crops, counts, valids, [None] * len(images)
        valids, distinct, inverses = [], [], []
        for binary in binaries:
            valid = binary.view(torch.uint8).flatten(1).amax(1).bool()
            valid_idx = valid.nonzero()[:, 0]
            first, inverse = unique_masks(binary[valid_idx])
            valids.append(valid)
            distinct.append(binary[valid_idx[first]])
            inverses.append(inverse)
        method = crop_method or ("fast" if images[0].is_cuda else "reference")
        crops, counts = self.binary_crops_many(images, distinct, method)
        return crops, counts, valids, inverses
