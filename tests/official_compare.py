"""Element-wise comparison with official fixture tensors, with the tolerance stated per call."""

from __future__ import annotations


def assert_close(actual, expected, rtol: float, atol_of_max: float = 0.0, atol: float = 0.0):
    """Element-wise ``|a - e| <= atol + atol_of_max * max|e| + rtol * |e|``.

    ``rtol`` covers float32 rounding that grows with a value's magnitude (accumulation order
    in convolutions and matrix products: thread count, kernel choice); ``atol_of_max`` covers
    values near zero, where a relative bound is meaningless, as a fraction of the tensor's
    scale. Shapes must match exactly.
    """
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    bound = atol + atol_of_max * e.abs().max() + rtol * e.abs()
    excess = (a - e).abs() - bound
    worst = int(excess.argmax())
    assert excess.max() <= 0, (
        f"{int((excess > 0).sum())} of {e.numel()} elements out of tolerance; worst: "
        f"{a.flatten()[worst].item():.6g} vs expected {e.flatten()[worst].item():.6g} "
        f"(bound {bound.flatten()[worst].item():.3g})"
    )


def check_head_stages(model, out: dict) -> None:
    """Pixel decoder and transformer predictor from the official backbone features.

    Tolerances: the official R101c run differs between 1 and 2 threads by 1.4e-4 relative
    above 1e-3 of the max on mask features (3.8e-6 abs on 15.8), 4.2e-4 on pred_embed and
    9.3e-4 on pred_masks (4e-3 abs on 418: the x100-amplified mask embedding); on the Swin
    fixture our mask features differ by 1.6e-5 abs on ~13 (GroupNorm + conv accumulation).
    """
    feats = [out[f"backbone.res{i}"][None] for i in range(2, 6)]
    mask_features = model.sem_seg_head.pixel_decoder(feats)
    assert_close(mask_features[0], out["pixel_decoder.mask_features"], rtol=1e-3, atol_of_max=2e-6)
    embed, masks = model.sem_seg_head.predictor(
        out["backbone.res5"][None], out["pixel_decoder.mask_features"][None]
    )
    assert_close(embed[0], out["head.pred_embed"], rtol=2e-3, atol_of_max=2e-5)
    assert_close(masks[0], out["head.pred_masks"], rtol=3e-3, atol_of_max=2e-5)


def check_clip_tower(model, out: dict, feature_tol: float, prob_tol: float, text=None) -> None:
    """The model's CLIP image tower on the official-tiny crops and region masks: each
    feature within ``feature_tol`` (distance of unit vectors) of the official one, and the
    CLIP class probabilities of every valid mask within ``prob_tol`` of the official ones with
    the same winning class. ``text``: (K, C) class features to use instead of the official
    ones (a low-precision text tower)."""
    import torch.nn.functional as F

    from ovseg.modeling.fusion import clip_class_probs

    feats = model.clip_adapter.encode_masked(
        out["clip.regions_normalized_224"], out["clip.region_masks_224"].float()
    )
    distance = (F.normalize(feats.float(), dim=-1) - out["clip.image_features_normalized"]).norm(
        dim=-1
    )
    assert distance.max() <= feature_tol, f"CLIP features off by {distance.tolist()}"
    text_void = (
        out["text.features_with_void"] if text is None else model.clip_adapter.with_void(text)
    )
    probs = clip_class_probs(model.clip_adapter.similarity_logits(feats, text_void))
    err = (probs - out["clip.cls_probs"]).abs().max().item()
    assert err <= prob_tol, f"CLIP probabilities off by {err:.3g} (bound {prob_tol})"
    assert probs.argmax(1).tolist() == out["clip.cls_probs"].argmax(1).tolist()


def fused_bounds(out: dict, ensemble_weight: float, prob_tol: float, mask_tol: float = 5e-4):
    """Per-pixel bounds on ``|sem_seg - official|`` (official-tiny) for a model whose CLIP
    class probabilities are within ``prob_tol`` and mask probabilities within ``mask_tol`` of
    the official ones. Returns ``(ensemble bound, CLIP-alone bound, CLIP-alone reference)``.

    - Ensemble (official ``semantic_inference``): a valid mask's row is
      ``p_prop^(1-w) * p_clip^w``; ``x -> x^w`` is w-Hölder with constant 1, so the row moves
      by at most ``p_prop^(1-w) * prob_tol^w``; moved masks add ``mask_tol * sum_q row_q``.
    - CLIP alone (weight 0 / ``clip_only``): ``sum_valid p_clip * m``, which moves by at most
      ``prob_tol * sum_valid m + mask_tol * (number of valid masks)``.
    """
    import torch

    valid = out["clip.valid_flag"].bool()
    masks = out["mask_pred_probs"]
    w = ensemble_weight
    rows = out["mask_cls_probs"][valid] ** (1 - w) * prob_tol**w
    ensemble = torch.einsum("qc,qhw->chw", rows, masks[valid] + mask_tol)
    ensemble += mask_tol * out["ensembled_cls_probs"].sum(0)[:, None, None]
    alone = prob_tol * (masks[valid] + mask_tol).sum(0) + mask_tol * int(valid.sum())
    reference = torch.einsum("qc,qhw->chw", out["clip.cls_probs"], masks[valid])
    return ensemble, alone.expand_as(reference), reference


def assert_within(actual, expected, bound, what: str) -> None:
    """Element-wise ``|actual - expected| <= bound``, naming the worst element's ratio."""
    ratio = ((actual.float() - expected.float()).abs() / bound).max().item()
    assert ratio <= 1.0, f"{what}: off by {ratio:.3g} x its bound"
