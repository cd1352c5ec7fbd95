"""The two-stage OVSeg model: mask proposals + mask-adapted CLIP, ensembled and fused."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ovseg.data.transforms import normalize_and_pad
from ovseg.modeling.classify import classify, fuse, vocabulary
from ovseg.modeling.clip_branch import MaskAdaptedCLIP
from ovseg.modeling.clip_image_side import ClipImageSide
from ovseg.modeling.config import OVSegConfig
from ovseg.modeling.fusion import fusion_settings
from ovseg.modeling.pixel_decoder import PixelDecoder
from ovseg.modeling.precision import ieee_fp32, without_autocast
from ovseg.modeling.prompts import prompt_templates
from ovseg.modeling.proposals import Proposals
from ovseg.modeling.transformer_decoder import OpenVocabPredictor
from ovseg.vocabulary import validate_class_names


@dataclass(frozen=True)
class HubFormat:
    """The Hub file formats of ``OVSeg`` (registered by ``ovseg.weights.pretrained``).

    Attributes:
        save: ``(model, folder)``: write the files of ``save_pretrained``.
        load: ``(model_id, *, config, **hub_kwargs) -> OVSeg``: read them back.
        card: ``(model, **card_kwargs) -> huggingface_hub.ModelCard``.
    """

    save: Callable[..., None]
    load: Callable[..., Any]
    card: Callable[..., Any]


def _hub_format() -> HubFormat:
    if OVSeg.hub_format is None:
        raise RuntimeError("the Hub formats are registered by ovseg.weights: import ovseg first")
    return OVSeg.hub_format


class SemSegHead(nn.Module):
    """``sem_seg_head``: pixel decoder + transformer predictor (official names)."""

    def __init__(self, pixel_decoder: PixelDecoder, predictor: OpenVocabPredictor):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor


class OVSeg(
    ClipImageSide,
    nn.Module,
    PyTorchModelHubMixin,
    library_name="ovseg",
    tags=["ovseg", "open-vocabulary-segmentation", "semantic-segmentation"],
    pipeline_tag="image-segmentation",
    paper_url="https://arxiv.org/abs/2210.04150",
):
    """Open-vocabulary segmenter. Children carry the official checkpoint names.

    Args:
        backbone: module mapping (B, 3, H, W) to ``{"res2".."res5"}`` features; None (with
            ``sem_seg_head`` None) for a CLIP-branch-only model whose proposals come from an
            external generator (SAM, superpixels), classified by CLIP alone.
        sem_seg_head: pixel decoder + open-vocabulary predictor, or None (see ``backbone``).
        clip_adapter: the mask-adapted CLIP branch.
        config: the ``OVSegConfig`` the model was built from (saved with checkpoints).

    Hub conventions (``huggingface_hub.PyTorchModelHubMixin``): ``save_pretrained(folder)``
    writes ``config.json``, ``model.safetensors`` and a model card (``README.md``);
    ``OVSeg.from_pretrained(repo_id_or_folder)`` reads them back; ``push_to_hub(repo_id)``
    uploads them. ``provenance`` (where the weights come from, their licence, evaluation
    results) travels in the safetensors metadata and fills the model card.
    """

    def __init__(
        self,
        backbone: nn.Module | None,
        sem_seg_head: SemSegHead | None,
        clip_adapter: MaskAdaptedCLIP,
        config: OVSegConfig,
    ):
        super().__init__()
        if (backbone is None) != (sem_seg_head is None):
            raise ValueError("give both backbone and sem_seg_head, or neither (CLIP branch only)")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.clip_adapter = clip_adapter
        self.config = config
        self.random_weights = False  # True when built without weights (ovseg-test-tiny)
        self.provenance: dict = {}
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def has_proposal_head(self) -> bool:
        """False for a CLIP-branch-only model (proposals must come from a generator)."""
        return self.sem_seg_head is not None

    # ---- Hugging Face Hub (PyTorchModelHubMixin) ----------------------------------------
    # The file formats are a loader's business: ``ovseg.weights.pretrained`` registers them
    # here as ``hub_format`` (a ``HubFormat``) when ``ovseg`` is imported, so that building a
    # model never imports a loader.
    hub_format: ClassVar[HubFormat | None] = None

    def _save_pretrained(self, save_directory) -> None:
        _hub_format().save(self, save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, config: dict | None = None, **kwargs) -> OVSeg:
        return _hub_format().load(model_id, config=config, **kwargs)

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict | None = None, **kwargs):
        """Upload ``config.json``, ``model.safetensors`` and the model card to ``repo_id``
        (``huggingface_hub``; needs a token with write access). ``model_card_kwargs``: see
        ``ovseg.weights.pretrained.model_card`` (provenance, recipe, license, eval_results)."""
        card = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)

    def generate_model_card(self, *args, **kwargs):
        return _hub_format().card(self, **kwargs)

    # ---- stage 1: proposals (vocabulary-free) -----------------------------------------
    def proposal_outputs(self, image: torch.Tensor, all_layers: bool = False):
        """Run backbone, pixel decoder and predictor on a normalised padded batch.

        Args:
            image: (B, 3, Hp, Wp) normalised and padded.
        Returns:
            ``(embeddings (B, Q, C), mask_logits (B, Q, Hp/4, Wp/4))``; lists over layers
            when ``all_layers``.
        """
        if not self.has_proposal_head:
            raise ValueError(
                "this model has no MaskFormer proposal head (CLIP branch only): give it a "
                "proposal generator, e.g. Predictor(model, proposal_generator=build_generator("
                '"sam", model, checkpoint=...)) or --proposals sam'
            )
        features = self.backbone(_as_input_of(self.backbone, image))
        names = sorted(features)
        decoder = self.sem_seg_head.pixel_decoder
        mask_features = decoder([_as_input_of(decoder, features[n]) for n in names])
        # The transformer predictor always runs at its own (fp32) precision, under autocast
        # too (mixed-precision training): at initialisation its first layer takes the
        # LayerNorm of an all-zero vector (zero queries, zero attention biases), whose
        # backward multiplies by 1/sqrt(eps) ~ 316, and the class head's temperature of 100
        # comes on top; in fp16 those gradients overflowed at any loss scale above 8.
        predictor = self.sem_seg_head.predictor
        with without_autocast(image.device):
            return predictor(
                _as_input_of(predictor, features[names[-1]]).float(),
                _as_input_of(predictor, mask_features).float(),
                all_layers,
            )

    def propose(self, image: torch.Tensor) -> Proposals:
        """Proposals for one (3, H, W) 0-255 model-input image.

        Returns ``Proposals`` with masks = sigmoid of the mask logits upsampled (bilinear) to
        the padded size and cropped to (H, W), and the query class embeddings.
        """
        return self.propose_batch([image])[0]

    def propose_batch(self, images: Sequence[torch.Tensor]) -> list[Proposals]:
        """``propose`` for several (3, H, W) 0-255 model-input images, batched.

        Images whose padded size (``size_divisibility``) is the same go through backbone,
        pixel decoder and decoder as one batch; each image's outputs equal ``propose`` on it
        alone up to float rounding. Images are never padded further to share a batch: the
        Swin windows, the convolutions' borders and the decoder's attention all see the
        padding, so that would change the outputs.
        """
        div = self.config.size_divisibility
        inputs = [
            normalize_and_pad(image.to(self.device), self.pixel_mean, self.pixel_std, div)
            for image in images
        ]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape[-2:]), []).append(i)
        out: list[Proposals] = [None] * len(images)  # type: ignore[list-item]
        for size, members in groups.items():
            batch = torch.cat([inputs[i] for i in members])
            embeddings, mask_logits = self.proposal_outputs(batch)
            for j, i in enumerate(members):  # one image at a time: (Q, Hp, Wp) fp32 each
                h, w = images[i].shape[-2:]
                logits = F.interpolate(
                    mask_logits[j : j + 1], size=size, mode="bilinear", align_corners=False
                )[0, :, :h, :w]
                out[i] = Proposals(masks=logits.sigmoid(), embeddings=embeddings[j])
        return out

    # ---- vocabulary ------------------------------------------------------------------------
    def prompt_templates(self, templates: str | tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The prompt templates: None -> the config's (``text_templates``); "vild",
        "imagenet" or "predefined" (the config's ``predefined_templates``); or a sequence of
        template strings, each with one ``{}``."""
        cfg = self.config
        if templates is None:
            templates = cfg.text_templates
        if isinstance(templates, str):
            return prompt_templates(templates, cfg.predefined_templates)
        return prompt_templates("predefined", tuple(templates))

    def encode_text(
        self, class_names: list[str], templates: str | tuple[str, ...] | None = None
    ) -> torch.Tensor:
        """(K, C) normalised class text features, cached per weights, names and templates.

        Each template is encoded and L2-normalised, the templates are averaged and the mean is
        L2-normalised again, as every official prompt extractor does. ``templates`` as in
        ``prompt_templates`` (default the config's, ViLD's 14 for the released models).
        """
        return self.clip_adapter.text_features(
            validate_class_names(class_names), self.prompt_templates(templates)
        )

    @torch.no_grad()
    def forward(
        self,
        image: torch.Tensor,
        class_names: list[str],
        ensemble_weight: float | None = None,
        mask_threshold: float | None = None,
        clip_only: bool | None = None,
        mode: str | None = None,
        templates: str | tuple[str, ...] | None = None,
        clip_ensemble: bool | None = None,
    ) -> torch.Tensor:
        """The whole official pipeline on one model-input image, in IEEE fp32 on CUDA
        (TF32 off inside, as ``ovseg.modeling.precision.ieee_fp32``).

        Args:
            image: (3, H, W) uint8 or float 0-255, already resized.
            others: see ``ovseg.modeling.fusion.fusion_settings`` and ``encode_text``.
        Returns:
            sem_seg (K, H, W) over ``vocabulary(class_names, settings)`` (in demo mode a
            single name gets ``others`` appended).
        """
        with ieee_fp32():
            return self._forward(
                image, class_names, ensemble_weight, mask_threshold, clip_only, mode, templates,
                clip_ensemble,
            )  # fmt: skip

    def _forward(
        self, image, class_names, ensemble_weight, mask_threshold, clip_only, mode, templates,
        clip_ensemble,
    ) -> torch.Tensor:  # fmt: skip
        settings = fusion_settings(
            self.config, mode, ensemble_weight, mask_threshold, clip_only, clip_ensemble
        )
        names = vocabulary(class_names, settings)
        proposals = self.propose(image)
        clip_features = None
        if settings.clip_ensemble or proposals.embeddings is None:
            clip_features = self.clip_image_features(
                image, proposals.masks, settings.mask_threshold
            )
        text = self.encode_text(names, templates)
        probs, masks = classify(self.clip_adapter, proposals, clip_features, text, settings)
        return fuse(probs, masks, settings, names)


def _as_input_of(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s first floating weight (bf16 models take bf16)."""
    for p in module.parameters():
        if p.is_floating_point():
            return x.to(p.dtype) if x.is_floating_point() else x
    return x
