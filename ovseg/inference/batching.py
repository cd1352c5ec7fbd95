"""Several images at once: ``set_images`` and ``predict_batch`` of ``Predictor``.

The proposal model runs on batches of images with the same padded size, and the masked
crops of all images go through the CLIP image tower together (what a GPU needs to be busy).
Each image's outputs equal those of ``set_image`` and ``predict`` up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ovseg.data.image import to_rgb_array
from ovseg.inference.exclusive import one_thread_at_a_time
from ovseg.inference.image_state import ImageState
from ovseg.inference.segmentation import Segmentation
from ovseg.modeling.classify import vocabulary


class BatchPredictions:
    """The multi-image methods of ``ovseg.Predictor`` (a mixin: it uses the predictor's
    model, options, ``resize_input``, ``_settings``, ``_predict`` and ``_encode_clip``)."""

    image_batch: list[ImageState] | None

    @one_thread_at_a_time
    @torch.inference_mode()
    def set_images(self, images: Sequence) -> None:
        """Cache the vocabulary-free work for several images at once; ``predict_batch``
        then segments all of them.

        The images are resized as by ``set_image``; those whose model inputs pad to the same
        size go through the proposal model as one batch (``OVSeg.propose_batch``), others
        in their own batches (padding them further would change the outputs). A proposal
        generator runs per image. With test-time augmentation each image keeps its views.

        Args:
            images: a sequence of what ``set_image`` takes.
        """
        rgbs = [to_rgb_array(image) for image in images]
        if not rgbs:
            raise ValueError("set_images needs at least one image")
        self.reset_image()
        resized = [self.resize_input(rgb) for rgb in rgbs]
        augmentation = self.augmentation
        if augmentation is not None:
            batch = [
                ImageState(rgb.shape[:2], clip_cache={}, views=augmentation.views(image))
                for rgb, image in zip(rgbs, resized)
            ]
        else:
            device = self.model.device
            inputs = [
                torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).to(device)
                for image in resized
            ]
            with self.float_math():
                if self.proposal_generator is None:
                    proposals = self.model.propose_batch(inputs)
                else:
                    proposals = [self.proposal_generator(x) for x in inputs]
            batch = [
                ImageState(rgb.shape[:2], x, p, {}) for rgb, x, p in zip(rgbs, inputs, proposals)
            ]
        for state, rgb in zip(batch, rgbs):
            state.refine_masks = self._refine_masks(rgb)
        self.image_batch = batch

    @one_thread_at_a_time
    @torch.inference_mode()
    def predict_batch(
        self,
        class_names: list[str],
        ensemble_weight: float | None = None,
        mask_threshold: float | None = None,
        clip_only: bool | None = None,
        mode: str | None = None,
        templates: str | tuple[str, ...] | None = None,
        clip_ensemble: bool | None = None,
        granularity: float | None = None,
        save_proposals: bool = False,
    ) -> list[Segmentation]:
        """``predict`` for every image of ``set_images`` (or the one of ``set_image``), in
        order. The masked crops of all the images that need CLIP features go through the
        CLIP image tower together. Arguments as ``predict``.
        """
        kwargs = dict(
            ensemble_weight=ensemble_weight,
            mask_threshold=mask_threshold,
            clip_only=clip_only,
            mode=mode,
            templates=templates,
            clip_ensemble=clip_ensemble,
            granularity=granularity,
            save_proposals=save_proposals,
        )
        batch = self.image_batch
        if batch is None:
            return [self.predict(class_names, **kwargs)]
        try:
            with self.float_math():
                self._encode_clip_batch(batch, class_names, kwargs)
                results = []
                for state in batch:
                    self._use(state)
                    results.append(self._predict(class_names, **kwargs))
        finally:
            self._use(ImageState(clip_cache={}))
        return results

    def _encode_clip_batch(self, batch: list[ImageState], class_names, kwargs: dict) -> None:
        """The CLIP features ``_predict`` will ask for, for every single-view image of
        ``batch``, encoded in one pass (``_encode_clip``)."""
        model = self.model
        keys = ("mode", "ensemble_weight", "mask_threshold", "clip_only", "clip_ensemble")
        settings, _ = self._settings(*(kwargs[k] for k in keys), kwargs["granularity"])
        text = None
        requests = []
        for state in batch:
            if state.views is not None:
                continue
            if not (settings.clip_ensemble or state.proposals.embeddings is None):
                continue
            if text is None:  # cached: the predictions below reuse it
                text = model.encode_text(vocabulary(class_names, settings), kwargs["templates"])
            self._use(state)
            key = self._clip_key(settings.mask_threshold, self.top_k_queries(text))
            if key not in state.clip_cache:
                requests.append((state, key))
        if requests:
            self._encode_clip(requests)
