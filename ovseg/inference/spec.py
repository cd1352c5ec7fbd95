"""``PredictorSpec``: everything that decides a prediction, as one plain, picklable object.

A spec names where the model comes from (``ModelSource``), which proposal generator gives the
masks (``ProposalSource``), how the predictor runs (``InferenceOptions``) and the per-call
prediction settings (``PredictSettings``). ``spec.build()`` makes the ``Predictor``;
``spec.predict_kwargs()`` are the arguments of ``Predictor.predict``. The command line turns
its flags into one spec in one place (``ovseg.cli._spec``), and every command builds from it;
a worker process (``torchrun``, Ray) gets the spec and builds its own predictor.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ovseg.inference.options import InferenceOptions
from ovseg.inference.predictor import Predictor
from ovseg.inference.refine import SEGMENT_ANY_RGBD_SAM, SamRefiner
from ovseg.modeling.ovseg import OVSeg
from ovseg.modeling.proposals import ProposalGenerator
from ovseg.proposals import build_generator
from ovseg.weights import build_clip_only, build_model, identity, load_official
from ovseg.weights.hub import resolve_file


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: exactly one of

    - ``model`` (a variant name, ``hf://OWNER/REPO[@REV]`` or a ``save_pretrained`` folder),
      with an optional ``checkpoint`` for a named variant;
    - ``config`` + ``weights``: an official detectron2 YAML and checkpoint;
    - ``clip``: a CLIP weights file or download name, for a CLIP-branch-only model whose
      proposals come from a generator (SAM, superpixels).

    ``device``: where the model runs. ``cache_converted``: keep a safetensors copy of a
    legacy-format ``.pth`` (``ovseg.weights.checkpoints.read_state_dict``).
    ``allow_base_outside``: the official YAML's ``_BASE_`` files may lie outside its folder.
    """

    model: str | None = None
    checkpoint: str | None = None
    config: str | None = None
    weights: str | None = None
    clip: str | None = None
    device: str = "cpu"
    cache_converted: bool = True
    allow_base_outside: bool = False

    def __post_init__(self) -> None:
        if self.clip and (self.model or self.checkpoint or self.config or self.weights):
            raise ValueError(
                "--clip builds a CLIP-only model for --proposals sam/superpixels; give it "
                "alone, without --model/--checkpoint/--config/--weights"
            )
        if (self.config or self.weights) and not (self.config and self.weights):
            raise ValueError("--config and --weights go together; give both")
        if self.config and (self.model or self.checkpoint):
            raise ValueError("give either --model [--checkpoint] or --config --weights, not both")
        if self.checkpoint and not self.model:
            raise ValueError("--checkpoint gives the weights of a --model; name the model too")
        if not (self.model or self.config or self.clip):
            raise ValueError(
                "no model given: pass --model NAME|hf://OWNER/REPO|FOLDER [--checkpoint PATH], "
                "--config X.yaml --weights W.pth, or --clip NAME_OR_PATH with --proposals sam"
            )

    @property
    def name(self) -> str:
        """A short name for messages and pages."""
        return str(self.model or self.config or self.clip)

    def record(self) -> dict[str, Any]:
        """What identifies the model without building it: its name and the sha256 of every
        file it is built from (``ovseg.weights.identity``; None for a file not found)."""
        if self.clip:
            return identity.clip_identity(self.clip)
        if self.config:
            return identity.official_identity(
                self.config, self.weights, allow_base_outside=self.allow_base_outside
            )
        return identity.model_identity(self.model, self.checkpoint)

    def load(self) -> OVSeg:
        """Build the model in eval mode on ``device``."""
        if self.clip:
            model = build_clip_only(resolve_file(self.clip, "--clip"))
        elif self.config:
            model = load_official(
                self.config,
                self.weights,
                cache_converted=self.cache_converted,
                allow_base_outside=self.allow_base_outside,
            )
        else:
            model = build_model(
                self.model, checkpoint=self.checkpoint, cache_converted=self.cache_converted
            )
        return model.to(self.device).eval()


# SAM's options for eval mode (soft fusion, every pixel labelled) unless given: ovseg's own
# rule, since the authors used SAM only in their demo space: disjoint masks (the smallest
# covering mask wins) plus one mask of the uncovered pixels, at the model's test resize.
SAM_EVAL_OPTIONS = {"overlap": "smallest_wins", "fill_uncovered": True, "long_side": None}


@dataclass(frozen=True)
class ProposalSource:
    """The mask source: ``"maskformer"`` (the model's own head), ``"sam"`` or
    ``"superpixels"``, with the generator's keyword options (``ovseg.proposals``; a SAM
    ``checkpoint`` may be a download name)."""

    name: str = "maskformer"
    options: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The generator and its options as they shape the masks: a checkpoint is recorded
        by its sha256, the device not at all."""
        options = {k: v for k, v in sorted(self.options.items()) if k != "device"}
        if options.get("checkpoint") is not None:
            options["checkpoint"] = {"sha256": identity.weights_file_sha256(options["checkpoint"])}
        return {"name": self.name, "options": _plain(options)}

    def refiner(self, model: OVSeg) -> SamRefiner:
        """The ``--refine sam`` refiner for ``model``: SAM on the photo at its own size, every
        mask in SAM's order, with SegmentAnyRGBD's settings (``SEGMENT_ANY_RGBD_SAM``, and the
        ``sam-vit-h`` download as weights) where ``options`` give none (a ``test_tiny`` SAM
        without weights keeps its filters off)."""
        if self.name != "sam":
            raise ValueError(f"refinement is by SAM only ('sam'), got {self.name!r}")
        defaults = dict(SEGMENT_ANY_RGBD_SAM)
        if self.options.get("model_type") == "test_tiny" and not self.options.get("checkpoint"):
            for random_filter in ("pred_iou_thresh", "stability_score_thresh"):
                defaults.pop(random_filter)
        elif not self.options.get("checkpoint"):
            defaults["checkpoint"] = "sam-vit-h"  # SegmentAnyRGBD's ViT-H (ovseg download)
        options = {**defaults, "overlap": "sum", "fill_uncovered": False, "long_side": None}
        generator = dataclasses.replace(self, options={**options, **self.options}).build(model)
        return SamRefiner(generator)

    def build(self, model: OVSeg, mode: str | None = None) -> ProposalGenerator | None:
        """The generator for ``model``; None means the model's own MaskFormer head.

        ``mode``: the fusion the masks are for. SAM defaults to the authors' space (every
        mask, 1280 on the longer side) except in ``"eval"`` mode, where options not given
        come from ``SAM_EVAL_OPTIONS``."""
        if self.name == "maskformer":
            if not model.has_proposal_head:
                raise ValueError(
                    "this model is the CLIP branch alone (--clip): choose --proposals sam or "
                    "superpixels to give it masks"
                )
            if self.options:
                raise ValueError(f"the maskformer proposals take no options, got {self.options}")
            return None
        options = dict(self.options)
        if self.name == "sam":
            if mode == "eval":
                options = {**SAM_EVAL_OPTIONS, **options}
            options.setdefault("device", str(model.device))
            if options.get("checkpoint"):  # a download name (sam-vit-h, sam-vit-l) or a path
                options["checkpoint"] = resolve_file(options["checkpoint"], "--sam-checkpoint")
        return build_generator(self.name, model, **options)


@dataclass(frozen=True)
class PredictSettings:
    """The arguments of ``Predictor.predict`` besides the vocabulary; None leaves the
    library's default (the model config's, or the official demo settings in demo mode)."""

    mode: str | None = None
    ensemble_weight: float | None = None
    mask_threshold: float | None = None
    clip_only: bool | None = None
    clip_ensemble: bool | None = None
    templates: str | tuple[str, ...] | None = None
    granularity: float | None = None
    save_proposals: bool | None = None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments that are set."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class PredictorSpec:
    """Model, proposals, run options and prediction settings: what ``build`` needs to make a
    ``Predictor`` and what ``predict_kwargs`` passes to each ``predict``."""

    model: ModelSource
    proposals: ProposalSource = field(default_factory=ProposalSource)
    options: InferenceOptions = field(default_factory=InferenceOptions)
    predict: PredictSettings = field(default_factory=PredictSettings)
    refine: ProposalSource | None = None

    def build(self) -> Predictor:
        """Load the model, build the generator and return the ``Predictor``."""
        model = self.model.load()
        for name in ("dtype", "text_dtype"):
            if getattr(self.options, name) == "int8" and model.device.type != "cpu":
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} int8 runs on CPU only, not {model.device}; use bf16")
        mode = self.predict.mode or model.config.mode
        generator = self.proposals.build(model, mode)
        refiner = None if self.refine is None else self.refine.refiner(model)
        return Predictor(model, proposal_generator=generator, options=self.options, refiner=refiner)

    def predict_kwargs(self) -> dict[str, Any]:
        return self.predict.kwargs()

    def record(self) -> dict[str, Any]:
        """Everything that shapes the outputs, JSON-ready: ``{"model": {name, weights_sha256,
        ...}, "proposals": {name, options}, "inference": {dtype, text_dtype, top_k, TTA and
        sliding-window options}, "predict": {the predict keyword arguments that are set}}``,
        and ``"refine": {name, options}`` with a refinement.

        ``ovseg segment`` writes it into each output JSON (``"options"``) and redoes an image
        whose record differs (``ovseg.inference.jobs.redo_reasons``). Settings that change
        float rounding only (device, the fast path, channels_last, compile) are left out.
        No model is built; weight files are hashed once per file version.
        """
        return {
            "model": self.model.record(),
            "proposals": self.proposals.record(),
            "inference": self.options.record(),
            "predict": _plain(self.predict.kwargs()),
            **({} if self.refine is None else {"refine": self.refine.record()}),
        }


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))
