"""``Predictor``: set an image once, then segment it with any vocabulary, cheaply.

``set_image`` runs everything that does not depend on the vocabulary: the test-time resize,
the proposal model (or another proposal generator), and the CLIP image features of the
masked crops (cached per mask threshold). ``predict`` then runs only the text tower (cached
per weights and vocabulary), the classification, the fusion and the resize back.

``set_images`` and ``predict_batch`` do the same for several images at once
(``ovseg.inference.batching``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import numpy as np
import torch

from ovseg.data.image import to_rgb_array
from ovseg.data.transforms import resize_longest_side, resize_shortest_edge
from ovseg.inference.acceleration import compile_clip_blocks
from ovseg.inference.batching import BatchPredictions
from ovseg.inference.exclusive import ThreadGuard, one_thread_at_a_time
from ovseg.inference.image_state import ImageState
from ovseg.inference.options import InferenceOptions
from ovseg.inference.prepare import prepare_model
from ovseg.inference.refine import SamRefiner, majority_refine
from ovseg.inference.segmentation import ProposalRecord, Segmentation
from ovseg.inference.tta import Augmentation, augmented_scores
from ovseg.modeling.classify import ClipImageFeatures, classify, fuse_masks, vocabulary
from ovseg.modeling.fusion import demo_unlabelled, fusion_settings, proposal_class_probs
from ovseg.modeling.ovseg import OVSeg
from ovseg.modeling.precision import ieee_fp32
from ovseg.modeling.proposals import ProposalGenerator, Proposals
from ovseg.vocabulary import validate_class_names


class Predictor(BatchPredictions):
    """Segment images with an ``OVSeg`` model.

    Not thread-safe: a predictor keeps one image's state between ``set_image`` and
    ``predict``; a call while another thread is inside one raises ``RuntimeError``
    (``ovseg.inference.exclusive``). Use one predictor per thread; they can share the model.

    Args:
        model: the model; it is not changed: ``self.model`` is a copy prepared for
            ``options`` that shares the weights it does not convert (``prepare_model``), so
            one model can serve several predictors, each dtype with its own copy.
        proposal_generator: mask source; None means the model's own MaskFormer head.
        options: ``InferenceOptions``; the default is the fast fp32 path, equal to the
            official outputs up to float rounding. ``InferenceOptions(fast=False)`` is the
            reference path.
        clip_encoder: ``(crops, region_masks) -> (B, C)`` replacing the CLIP image tower
            (e.g. ``ovseg.inference.onnx.OnnxClipEncoder``); default the model's own.
        refiner: ``SamRefiner`` (``--refine sam``): ``set_image`` also runs SAM on the photo
            and every prediction's label map is refined by SegmentAnyRGBD's majority rule
            (``ovseg.inference.refine``); None: no refinement.
    """

    def __init__(
        self,
        model: OVSeg,
        proposal_generator: ProposalGenerator | None = None,
        options: InferenceOptions | None = None,
        clip_encoder: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
        refiner: SamRefiner | None = None,
    ):
        self._thread_guard = ThreadGuard()
        self.refiner = refiner
        options = InferenceOptions() if options is None else options
        # what runs here: the machine's capabilities and the path "auto" picks among them
        self.choice = options.choice(model.device)
        self.options = options.resolved(model.device)
        self.model = prepare_model(model, self.options)
        self.proposal_generator = proposal_generator
        if self.options.compile and clip_encoder is None:
            compile_clip_blocks(self.model)
        self.clip_encoder = (
            self.model.clip_adapter.encode_masked if clip_encoder is None else clip_encoder
        )
        self.reset_image()

    def reset_image(self) -> None:
        self.original_size: tuple[int, int] | None = None
        self.input_image: torch.Tensor | None = None
        self.proposals: Proposals | None = None
        self._clip_cache: dict[tuple, ClipImageFeatures] = {}
        self.views: list[tuple[np.ndarray, bool]] | None = None  # TTA / sliding window only
        self.image_batch: list[ImageState] | None = None  # set_images only
        self.refine_masks = None  # the photo's SAM masks with a refiner

    def _state(self) -> ImageState:
        return ImageState(
            self.original_size,
            self.input_image,
            self.proposals,
            self._clip_cache,
            self.views,
            self.refine_masks,
        )

    def _use(self, state: ImageState) -> None:
        """Make ``state`` the current image (its CLIP cache is shared, not copied)."""
        self.original_size, self.input_image = state.original_size, state.input_image
        self.proposals, self.views = state.proposals, state.views
        self._clip_cache = state.clip_cache
        self.refine_masks = state.refine_masks

    @property
    def is_image_set(self) -> bool:
        return self.proposals is not None or self.views is not None or bool(self.image_batch)

    @property
    def augmentation(self) -> Augmentation | None:
        """The test-time augmentation / sliding-window plan (``ovseg.inference.tta``), or None."""
        return self.options.augmentation(self.model.config)

    def single_view_predictor(self) -> Predictor:
        """A predictor sharing this one's model and encoders, without augmentation."""
        view = copy.copy(self)
        view.options = self.options.without_augmentation()
        view.refiner = None  # the whole photo is refined once, after the views are merged
        view.reset_image()
        return view

    @one_thread_at_a_time
    @torch.inference_mode()
    def set_image(self, image) -> None:
        """Cache the vocabulary-free work for ``image``.

        Args:
            image: (H, W, 3) uint8 RGB array, a PIL image, or a path. Grayscale and RGBA are
                converted; other shapes raise ``ValueError``.
        """
        rgb = to_rgb_array(image)
        self.reset_image()
        resized = self.resize_input(rgb)
        augmentation = self.augmentation
        if augmentation is not None:  # views are run one at a time by predict (memory)
            self.views = augmentation.views(resized)
            self.original_size = rgb.shape[:2]
        else:
            self.set_model_input(resized, rgb.shape[:2])
        self.refine_masks = self._refine_masks(rgb)

    def _refine_masks(self, rgb: np.ndarray):
        if self.refiner is None:
            return None
        with self.float_math():
            return self.refiner.masks(rgb)

    def resize_input(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the model input: the authors' SAM space resize (longer side
        ``generator.long_side``, other side truncated, cv2 bilinear) when the proposal
        generator asks for it, else the model config's test resize (detectron2's shortest
        edge)."""
        long_side = getattr(self.proposal_generator, "long_side", None)
        if long_side:
            return resize_longest_side(rgb, int(long_side))
        cfg = self.model.config
        return resize_shortest_edge(rgb, cfg.min_size_test, cfg.max_size_test)

    @property
    def space_rule(self) -> bool:
        """Demo mode follows the authors' SAM space (``space_fusion``) for this predictor's
        proposals: the generator declares ``demo_rule = "space"`` (the SAM generator)."""
        return getattr(self.proposal_generator, "demo_rule", None) == "space"

    @one_thread_at_a_time
    @torch.inference_mode()
    def set_model_input(self, image: np.ndarray, original_size: tuple[int, int]) -> None:
        """Cache the vocabulary-free work for an (H, W, 3) uint8 image that is already the
        model input (no resize); ``predict`` resizes ``sem_seg`` to ``original_size``."""
        self.reset_image()
        tensor = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
        self.input_image = tensor.to(self.model.device)
        generate = self.proposal_generator or self.model.propose
        with self.float_math():
            self.proposals = generate(self.input_image)
        self.original_size = tuple(original_size)

    @one_thread_at_a_time
    def clip_features(
        self, mask_threshold: float | None = None, queries: torch.Tensor | None = None
    ) -> ClipImageFeatures:
        """CLIP image features of the masked crops at ``mask_threshold`` (cached).

        Args:
            queries: (k,) indices of the proposals to encode; None for all of them.
        """
        self._require_single_view()
        key = self._clip_key(mask_threshold, queries)
        if key not in self._clip_cache:
            self._encode_clip([(self._state(), key)])
        return self._clip_cache[key]

    def _clip_key(self, mask_threshold: float | None, queries: torch.Tensor | None) -> tuple:
        thr = self.model.config.mask_threshold if mask_threshold is None else float(mask_threshold)
        return thr, None if queries is None else tuple(queries.tolist())

    def _encode_clip(self, requests: list[tuple[ImageState, tuple]]) -> None:
        """Fill each state's CLIP cache at its (threshold, queries) key; the crops of all the
        images go through the CLIP image tower together (all with one threshold)."""
        thr = requests[0][1][0]
        images, masks = [], []
        for state, (_, queries) in requests:
            images.append(state.input_image)
            proposals = state.proposals.masks
            if queries is not None:
                proposals = proposals[torch.tensor(queries, device=proposals.device)]
            masks.append(proposals)
        with torch.inference_mode(), self.float_math():
            features = self.model.clip_image_features_batch(
                images,
                masks,
                thr,
                fast=self.options.fast,
                encoder=self.clip_encoder,
                batch_size=self.options.clip_batch(self.model.device, self.model.clip_adapter.arch),
            )
        for (state, key), feats in zip(requests, features):
            state.clip_cache[key] = feats

    def float_math(self) -> contextlib.AbstractContextManager:
        """The context of every model call: IEEE fp32 on CUDA (TF32 off, the caller's
        setting restored afterwards) unless ``options.tf32`` (``ovseg.modeling.precision``)."""
        return contextlib.nullcontext() if self.options.tf32 else ieee_fp32()

    def top_k_queries(self, text: torch.Tensor) -> torch.Tensor | None:
        """Indices (ascending) of the ``options.top_k`` proposals with the highest proposal
        score (max class probability of the proposal branch), or None to keep all."""
        self._require_single_view()
        k, proposals = self.options.top_k, self.proposals
        if k is None or k >= len(proposals):
            return None
        if proposals.embeddings is None:
            raise ValueError(
                "top_k needs proposal scores, but this proposal generator gives no class "
                "embeddings; use top_k=None"
            )
        logits = self.model.clip_adapter.similarity_logits(
            proposals.embeddings, self.model.clip_adapter.with_void(text)
        )
        scores = proposal_class_probs(logits).amax(dim=1)
        return scores.topk(k).indices.sort().values

    @one_thread_at_a_time
    @torch.inference_mode()
    def predict(
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
    ) -> Segmentation:
        """Segment the current image with the vocabulary ``class_names``.

        Args:
            class_names: K distinct, non-blank names.
            ensemble_weight: lambda of ``p_prop^(1-lambda) * p_clip^lambda``; 0 means CLIP
                alone on the valid masks, as in the official code. Default: the model
                config's (0.7 for the released models), or 0.0 in demo mode.
            mask_threshold: binarisation threshold for the CLIP crops (and the demo masks);
                default the config's (0.4 / 0.5), or 0.35 in demo mode.
            clip_only: classify with CLIP alone, on the non-empty masks (= weight 0).
            mode: "eval" (official ``OVSeg``: soft fusion of all masks; every pixel labelled)
                or "demo" (official ``OVSegDEMO``: each class keeps its best mask, binarised;
                a single name gets ``others`` appended; uncovered pixels are unlabelled, -1).
                None: the config's mode ("demo" for an ``OVSegDEMO`` config, else "eval").
                Demo mode on a non-demo config defaults to ``OFFICIAL_DEMO_SETTINGS``.
            templates: prompt templates, "vild", "imagenet", "predefined" or a sequence of
                template strings; default the config's.
            clip_ensemble: False classifies with the proposal branch alone (official
                ``CLIP_ENSEMBLE: False``); default the config's (True).
            granularity: demo mode's mask selection in [0, 1] (``granularity_keep``): each
                class keeps its best mask and every mask whose probability exceeds
                ``granularity`` times that best. Default ``options.granularity``, else 0.8
                with SAM proposals (the authors' space) and 1 otherwise (the official demo).
                With SAM proposals demo mode is the space's rule (``space_fusion``): kept
                masks add up, pixels no kept mask covers are unlabelled, and the label map
                is resized back with cv2's nearest-neighbour rule.
            save_proposals: attach the fused masks, their probabilities and kept flags
                (``Segmentation.proposals``, written to the JSON as ``"proposals"``).
        Returns:
            ``Segmentation`` with ``sem_seg`` (K, H, W) at the original image size.
        """
        if self.image_batch is not None:
            raise RuntimeError(
                "several images are set (set_images): segment them with predict_batch, or set "
                "one with set_image"
            )
        with self.float_math():
            return self._predict(
                class_names,
                ensemble_weight=ensemble_weight,
                mask_threshold=mask_threshold,
                clip_only=clip_only,
                mode=mode,
                templates=templates,
                clip_ensemble=clip_ensemble,
                granularity=granularity,
                save_proposals=save_proposals,
            )

    def _predict(
        self,
        class_names: list[str],
        ensemble_weight: float | None,
        mask_threshold: float | None,
        clip_only: bool | None,
        mode: str | None,
        templates: str | tuple[str, ...] | None,
        clip_ensemble: bool | None,
        granularity: float | None = None,
        save_proposals: bool = False,
    ) -> Segmentation:
        self._require_image()
        model = self.model
        settings, granularity = self._settings(
            mode, ensemble_weight, mask_threshold, clip_only, clip_ensemble, granularity
        )
        names = vocabulary(class_names, settings)
        if self.views is not None:  # test-time augmentation / sliding window: ovseg.inference.tta
            if save_proposals:
                raise ValueError(
                    "save_proposals needs one set of masks, but test-time augmentation and "
                    "the sliding window fuse several views; turn them off to save proposals"
                )
            scores = augmented_scores(
                self,
                validate_class_names(class_names),
                ensemble_weight=ensemble_weight,
                mask_threshold=mask_threshold,
                clip_only=clip_only,
                mode=mode,
                templates=templates,
                clip_ensemble=clip_ensemble,
                granularity=granularity,
            )
            unlabelled = demo_unlabelled(scores) if settings.mode == "demo" else None
            return self._refined(
                Segmentation.from_scores(names, scores, unlabelled, mode=settings.mode)
            )
        text = model.encode_text(names, templates)
        proposals = self.proposals
        queries = self.top_k_queries(text)
        if queries is not None:
            proposals = Proposals(proposals.masks[queries], proposals.embeddings[queries])
        clip = None
        if settings.clip_ensemble or proposals.embeddings is None:
            clip = self.clip_features(settings.mask_threshold, queries)
        probs, masks = classify(model.clip_adapter, proposals, clip, text, settings)
        fused = fuse_masks(probs, masks, settings, names)
        record = None
        if save_proposals:
            record = ProposalRecord(
                working_size=tuple(masks.shape[1:]),
                masks=(masks > settings.mask_threshold).cpu(),
                probs=probs.float().cpu(),
                kept=fused.kept.cpu(),
            )
        seg = Segmentation.from_fused(names, fused, self.original_size, settings.mode, record)
        return self._refined(seg)

    def _refined(self, seg: Segmentation) -> Segmentation:
        """``seg`` with its label map refined by the photo's SAM masks (with a refiner)."""
        if self.refine_masks is not None:
            seg.label_map = majority_refine(seg.label_map, self.refine_masks)
        return seg

    def _settings(
        self, mode, ensemble_weight, mask_threshold, clip_only, clip_ensemble, granularity
    ):
        """``(FusionSettings, granularity)`` of one ``predict`` call's arguments."""
        model = self.model
        if granularity is None and (model.config.mode if mode is None else mode) == "demo":
            granularity = self.options.granularity
        settings = fusion_settings(
            model.config,
            mode,
            ensemble_weight,
            mask_threshold,
            clip_only,
            clip_ensemble,
            granularity=granularity,
            space=self.space_rule,
        )
        return settings, granularity

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image set: call predictor.set_image(image) first")

    def _require_single_view(self) -> None:
        self._require_image()
        if self.views is not None:
            raise RuntimeError(
                "per-proposal results are not kept with test-time augmentation or a sliding "
                "window (each view runs inside predict); use options without them"
            )
