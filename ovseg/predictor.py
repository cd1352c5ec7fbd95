"""``Predictor``: set an image once, then segment it with any vocabulary, cheaply.

``set_image`` runs everything that does not depend on the vocabulary: the test-time resize,
the proposal model (or another proposal generator), and the CLIP image features of the
masked crops (cached per mask threshold). ``predict`` then runs only the text tower (cached
per weights and vocabulary), the classification, the fusion and the resize back.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovseg.data.image import to_rgb_array
from ovseg.data.transforms import resize_shortest_edge
from ovseg.modeling.fusion import semantic_fusion
from ovseg.modeling.ovseg import ClipImageFeatures, OVSeg
from ovseg.modeling.proposals import ProposalGenerator, Proposals
from ovseg.segmentation import Segmentation


class Predictor:
    """Segment images with an ``OVSeg`` model.

    Args:
        model: the model (moved to eval mode).
        proposal_generator: mask source; None means the model's own MaskFormer head.
    """

    def __init__(self, model: OVSeg, proposal_generator: ProposalGenerator | None = None):
        self.model = model.eval()
        self.proposal_generator = proposal_generator
        self.reset_image()

    def reset_image(self) -> None:
        self.original_size: tuple[int, int] | None = None
        self.input_image: torch.Tensor | None = None
        self.proposals: Proposals | None = None
        self._clip_cache: dict[float, ClipImageFeatures] = {}

    @property
    def is_image_set(self) -> bool:
        return self.proposals is not None

    @torch.inference_mode()
    def set_image(self, image) -> None:
        """Cache the vocabulary-free work for ``image``.

        Args:
            image: (H, W, 3) uint8 RGB array, a PIL image, or a path. Grayscale and RGBA are
                converted; other shapes raise ``ValueError``.
        """
        rgb = to_rgb_array(image)
        self.reset_image()
        cfg = self.model.config
        resized = resize_shortest_edge(rgb, cfg.min_size_test, cfg.max_size_test)
        tensor = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1)
        self.input_image = tensor.to(self.model.device)
        generate = self.proposal_generator or self.model.propose
        self.proposals = generate(self.input_image)
        self.original_size = rgb.shape[:2]

    def clip_features(self, mask_threshold: float | None = None) -> ClipImageFeatures:
        """CLIP image features of the masked crops at ``mask_threshold`` (cached)."""
        self._require_image()
        thr = self.model.config.mask_threshold if mask_threshold is None else float(mask_threshold)
        if thr not in self._clip_cache:
            with torch.inference_mode():
                self._clip_cache[thr] = self.model.clip_image_features(
                    self.input_image, self.proposals.masks, thr
                )
        return self._clip_cache[thr]

    @torch.inference_mode()
    def predict(
        self,
        class_names: list[str],
        ensemble_weight: float | None = None,
        mask_threshold: float | None = None,
        clip_only: bool | None = None,
    ) -> Segmentation:
        """Segment the current image with the vocabulary ``class_names``.

        Args:
            class_names: K distinct, non-blank names.
            ensemble_weight: lambda of ``p_prop^(1-lambda) * p_clip^lambda``; default from the
                model config (0.7 for the released models).
            mask_threshold: binarisation threshold for the CLIP crops (default 0.4 / 0.5).
            clip_only: classify with CLIP alone, on the non-empty masks.
        Returns:
            ``Segmentation`` with ``sem_seg`` (K, H, W) at the original image size.
        """
        self._require_image()
        text = self.model.encode_text(class_names)
        names = [n.strip() for n in class_names]
        cfg = self.model.config
        needs_clip = cfg.clip_ensemble or clip_only or self.proposals.embeddings is None
        clip = self.clip_features(mask_threshold) if needs_clip else None
        probs, masks = self.model.classify(self.proposals, clip, text, ensemble_weight, clip_only)
        sem_seg = semantic_fusion(probs, masks)
        sem_seg = F.interpolate(
            sem_seg[None], size=self.original_size, mode="bilinear", align_corners=False
        )[0]
        return Segmentation.from_scores(names, sem_seg.float().cpu())

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image set: call predictor.set_image(image) first")
