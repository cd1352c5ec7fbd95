"""ONNX export of the image side, and onnxruntime inference through the ``Predictor``.

Two graphs, both with the text embeddings as an input so the vocabulary stays open:

- ``proposals.onnx``: ``image`` (1, 3, H, W) normalised and padded, ``text`` (T, C) class
  embeddings with the no-object row last -> ``embeddings`` (Q, C), ``mask_logits``
  (Q, H/4, W/4), ``class_logits`` (Q, T) = 100 * cos(embedding, text).
- ``clip_visual.onnx``: ``crops`` (B, 3, S, S) CLIP-normalised masked crops, ``region_masks``
  (B, 1, S, S), ``text`` (T, C) -> ``features`` (B, C) (not normalised) and ``logits``
  (B, T) = 100 * cos(feature, text). B is fixed at export (``crop_batch``); the encoder
  pads the last batch.

The text tower stays in PyTorch (``model.encode_text``, cached), as does the cheap part after
the graphs (mask upsampling, ensemble, fusion). ``onnx_predictor(model, folder)`` is a
``Predictor`` whose proposal model and CLIP image tower run in onnxruntime.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ovseg.data.transforms import normalize_and_pad
from ovseg.fileio import atomic_path, write_atomic
from ovseg.modeling.clip_branch import LOGIT_TEMPERATURE
from ovseg.modeling.proposals import Proposals

PROPOSALS_FILE = "proposals.onnx"
CLIP_FILE = "clip_visual.onnx"
META_FILE = "onnx_meta.json"


class ProposalGraph(nn.Module):
    """The exported proposal model: backbone, pixel decoder, transformer decoder."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        embeddings, mask_logits = self.model.proposal_outputs(image)
        embeddings, mask_logits = embeddings[0].float(), mask_logits[0].float()
        logits = LOGIT_TEMPERATURE * F.normalize(embeddings, dim=-1) @ text.T
        return embeddings, mask_logits, logits


class ClipGraph(nn.Module):
    """The exported CLIP image tower with mask prompts."""

    def __init__(self, model):
        super().__init__()
        self.clip = model.clip_adapter

    def forward(self, crops: torch.Tensor, region_masks: torch.Tensor, text: torch.Tensor):
        features = self.clip.encode_masked(crops, region_masks).float()
        return features, LOGIT_TEMPERATURE * F.normalize(features, dim=-1) @ text.T


def _export(module: nn.Module, args: tuple, path: Path, names: dict, dynamic: dict) -> None:
    """Export (TorchScript tracing) to ``path`` atomically: a temporary file, then a rename."""
    module.eval()  # the exporter restores the wrapper's mode recursively afterwards
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=names["inputs"],
            output_names=names["outputs"],
            dynamic_axes=dynamic,
            opset_version=18,
            dynamo=False,
        )


def export_onnx(
    model,
    folder: str | Path,
    image_size: tuple[int, int] = (640, 864),
    crop_batch: int = 16,
) -> dict:
    """Export the image side of ``model`` (fp32, eval) to ``folder``.

    Args:
        image_size: the padded (H, W) input size of the proposal graph, fixed in the graph
            (Swin's window layout is traced for one size): a multiple of the size
            divisibility, e.g. (640, 864) for 640 x 853 model inputs (4:3 photos).
        crop_batch: the fixed crop batch B of the CLIP graph.
    Returns:
        The metadata written to ``onnx_meta.json``.
    """
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("export_onnx takes an fp32 model; build it again without dtype='bf16'")
    model = model.eval()
    div = model.config.size_divisibility
    if len(image_size) != 2 or any(x <= 0 or x % div for x in image_size):
        raise ValueError(f"image_size must be (H, W), multiples of {div}, got {image_size}")
    # traced with autograd on: nn.MultiheadAttention's fused inference kernel has no ONNX form
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    c, s = cfg.clip.embed_dim, cfg.clip.image_size
    text = F.normalize(torch.randn(4, c), dim=-1)
    image = torch.randn(1, 3, *image_size)
    _export(
        ProposalGraph(model),
        (image, text),
        folder / PROPOSALS_FILE,
        {"inputs": ["image", "text"], "outputs": ["embeddings", "mask_logits", "class_logits"]},
        {"text": {0: "classes"}, "class_logits": {1: "classes"}},
    )
    crops = torch.randn(crop_batch, 3, s, s)
    regions = (torch.rand(crop_batch, 1, s, s) > 0.5).float()
    _export(
        ClipGraph(model),
        (crops, regions, text),
        folder / CLIP_FILE,
        {"inputs": ["crops", "region_masks", "text"], "outputs": ["features", "logits"]},
        {"text": {0: "classes"}, "logits": {1: "classes"}},
    )
    meta = {"config": cfg.to_dict(), "crop_batch": crop_batch, "image_size": list(image_size)}
    write_atomic(folder / META_FILE, json.dumps(meta, indent=1).encode())
    return meta


def _session(path: Path, providers: list[str] | None, optimize: bool = True):
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {path} (run `ovseg export-onnx` first)")
    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


class OnnxProposalGenerator:
    """A proposal generator backed by ``proposals.onnx`` (same output as ``OVSeg.propose``)."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None):
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        cfg = meta["config"]
        self.session = _session(folder / PROPOSALS_FILE, providers)
        self.pixel_mean = torch.tensor(cfg["pixel_mean"])
        self.pixel_std = torch.tensor(cfg["pixel_std"])
        self.size_divisibility = cfg["size_divisibility"]
        self.embed_dim = cfg["clip"]["embed_dim"]
        self.image_size = tuple(meta["image_size"])

    def __call__(self, image: torch.Tensor) -> Proposals:
        """(3, H, W) uint8 model input -> ``Proposals`` (masks (Q, H, W), embeddings (Q, C))."""
        h, w = image.shape[-2:]
        x = normalize_and_pad(image.cpu(), self.pixel_mean, self.pixel_std, self.size_divisibility)
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"this proposals.onnx takes padded inputs of {self.image_size}, but the image "
                f"{h}x{w} pads to {tuple(x.shape[-2:])}; export again with that --image-size"
            )
        dummy_text = np.zeros((1, self.embed_dim), np.float32)
        embeddings, mask_logits, _ = self.session.run(
            None, {"image": x.numpy(), "text": dummy_text}
        )
        logits = torch.from_numpy(mask_logits)[None]
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        masks = logits[0, :, :h, :w].sigmoid().to(image.device)
        return Proposals(masks=masks, embeddings=torch.from_numpy(embeddings).to(image.device))


class OnnxClipEncoder:
    """``(crops, region_masks) -> features`` backed by ``clip_visual.onnx`` (fixed batch)."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None):
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        self.batch = meta["crop_batch"]
        self.embed_dim = meta["config"]["clip"]["embed_dim"]
        self.session = _session(folder / CLIP_FILE, providers)

    def __call__(self, crops: torch.Tensor, region_masks: torch.Tensor | None) -> torch.Tensor:
        """(V, 3, S, S), (V, 1, S, S) -> (V, C) features, in batches of the exported size."""
        if region_masks is None:
            raise ValueError("the exported CLIP graph takes region masks (mask prompts)")
        v = crops.shape[0]
        dummy_text = np.zeros((1, self.embed_dim), np.float32)
        out = []
        for i in range(0, v, self.batch):
            c = crops[i : i + self.batch].float().cpu()
            r = region_masks[i : i + self.batch].float().cpu()
            n = c.shape[0]
            if n < self.batch:  # pad the last batch to the fixed size
                c = torch.cat([c, c.new_zeros(self.batch - n, *c.shape[1:])])
                r = torch.cat([r, r.new_ones(self.batch - n, *r.shape[1:])])
            features, _ = self.session.run(
                None, {"crops": c.numpy(), "region_masks": r.numpy(), "text": dummy_text}
            )
            out.append(torch.from_numpy(features[:n]))
        if not out:
            return crops.new_zeros(0, self.embed_dim)
        return torch.cat(out).to(crops.device)


def onnx_predictor(model, folder: str | Path, providers: list[str] | None = None, options=None):
    """A ``Predictor`` whose proposal model and CLIP image tower run in onnxruntime.

    ``model`` supplies the text tower (vocabulary stays open), classification and fusion; it
    should hold the same weights as the export.
    """
    from ovseg.inference.predictor import Predictor

    return Predictor(
        model,
        proposal_generator=OnnxProposalGenerator(folder, providers),
        options=options,
        clip_encoder=OnnxClipEncoder(folder, providers),
    )


@torch.no_grad()
def verify_onnx(model, folder: str | Path, seed: int = 0) -> dict[str, float]:
    """Max abs difference between onnxruntime and PyTorch on seeded random inputs.

    Returns ``{"proposals.embeddings", "proposals.mask_logits", "proposals.class_logits",
    "clip.features", "clip.logits": max |ort - torch|}``.
    """
    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    c, s, b = cfg.clip.embed_dim, cfg.clip.image_size, meta["crop_batch"]
    text = F.normalize(torch.randn(7, c, generator=g), dim=-1)
    image = torch.randn(1, 3, *meta["image_size"], generator=g)
    crops = torch.randn(b, 3, s, s, generator=g)
    regions = (torch.rand(b, 1, s, s, generator=g) > 0.4).float()
    diffs = {}
    for name, graph, inputs in (
        ("proposals", ProposalGraph(model), {"image": image, "text": text}),
        ("clip", ClipGraph(model), {"crops": crops, "region_masks": regions, "text": text}),
    ):
        was_training = model.training
        expected = graph.eval()(*inputs.values())
        model.train(was_training)
        session = _session(folder / (PROPOSALS_FILE if name == "proposals" else CLIP_FILE), None)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        outputs = [o.name for o in session.get_outputs()]
        for key, e, o in zip(outputs, expected, got):
            diffs[f"{name}.{key}"] = (e.float() - torch.from_numpy(o)).abs().max().item()
    return diffs
