"""bf16 autocast on the CPU against fp32; full-model gradient clipping inside the loop;
stochastic depth. (fp16 AMP with a grad scaler needs CUDA, which this suite does not have.)"""

import math

import pytest
import torch

from ovseg.modeling.swin import SwinTransformer
from ovseg.train.logs import read_csv
from ovseg.train.proposal_training import train_proposals
from tests.train_fixtures import loop_config, semseg_folder

TINY = dict(dataset="folder", crop=64, min_size_train=[64], pad_to=64, backbone_lr_mult=1.0,
            drop_path_rate=0.0, color_aug_ssd=False, flip="none")  # fmt: skip


def run(data, out, precision, steps=6, **kw):
    config = loop_config(out, max_steps=steps, precision=precision, batch_size=2, **kw)
    train_proposals(str(data), config, model_name="ovseg-test-tiny",
                    overrides={"num_queries": 5, "dropout": 0.0}, **TINY)  # fmt: skip
    return read_csv(out / "train_log.csv")


def test_bf16_autocast_trains_like_fp32(tmp_path):
    data = semseg_folder(tmp_path / "data", n_train=2)  # one batch: the same images every step
    fp32 = run(data, tmp_path / "fp32", "fp32")
    bf16 = run(data, tmp_path / "bf16", "bf16")
    losses32 = [r["loss"] for r in fp32]
    losses16 = [r["loss"] for r in bf16]
    assert all(math.isfinite(v) for v in losses16)
    # same weights, same batch at step 1: only the precision differs
    assert losses16[0] == pytest.approx(losses32[0], rel=0.05)
    assert losses16[-1] < losses16[0] and losses32[-1] < losses32[0]
    assert losses16[-1] == pytest.approx(losses32[-1], rel=0.25)


def test_full_model_gradient_clipping(tmp_path, monkeypatch):
    """One clip_grad_norm_ over every trainable tensor, max norm 0.01, before each step."""
    calls = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        calls.append((len(params), max_norm, args, kwargs))
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    data = semseg_folder(tmp_path / "data", n_train=2)
    run(data, tmp_path / "run", "fp32", steps=2, grad_clip=0.01)
    import ovseg

    model = ovseg.load_checkpoint(tmp_path / "run" / "model.safetensors")
    trainable = sum(
        1 for n, _ in model.named_parameters() if not n.startswith("clip_adapter.clip_model")
    )
    assert calls == [(trainable, 0.01, (), {})] * 2


def test_drop_path_linear_rates_and_eval_unchanged():
    torch.manual_seed(0)
    swin = SwinTransformer(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)
    x = torch.randn(2, 3, 64, 64)
    swin.eval()
    before = swin(x)["res5"]
    swin.set_drop_path_rate(0.3)
    rates = [b.drop_path for s in swin.layers for b in s.blocks]
    assert rates == pytest.approx([0.3 * k / 7 for k in range(8)])
    assert torch.equal(swin(x)["res5"], before)  # eval: no stochastic depth
    swin.train()
    assert not torch.equal(swin(x)["res5"], before)
    with pytest.raises(ValueError, match="drop_path_rate"):
        swin.set_drop_path_rate(1.0)


def test_fp16_autocast_gradients_fit_fp16_at_initialisation():
    """fp16 mixed precision (CUDA training's default; autocast on the CPU here). At
    initialisation the predictor's first decoder layer takes the LayerNorm of an all-zero
    vector (zero queries, zero attention biases), whose backward multiplies by 1/sqrt(eps),
    and the class head's temperature of 100 comes on top: ~8e3 per unit loss. The predictor
    and the class logits run in fp32 under autocast, so those gradients never meet an fp16
    tensor: with a loss scale of 1024 every gradient is finite. (With the predictor in fp16
    they overflowed above a scale of 8, so the grad scaler skipped 15 steps and settled at
    2; measured on CUDA before: 14 steps, scale 4.)"""
    from ovseg.train.criterion import SetCriterion
    from ovseg.train.matcher import HungarianMatcher
    from ovseg.train.proposal_training import ProposalTrainModule, freeze_for_proposals

    torch.manual_seed(0)
    model = build_tiny_for_training()
    freeze_for_proposals(model)
    model.train()
    classes = 5
    text = torch.nn.functional.normalize(torch.randn(classes, model.config.clip.embed_dim), dim=-1)
    weights = {"loss_ce": 2.0, "loss_mask": 20.0, "loss_dice": 1.0}
    criterion = SetCriterion(classes, HungarianMatcher(2.0, 20.0, 1.0), weights=weights)
    module = ProposalTrainModule(model, text, criterion)
    g = torch.Generator().manual_seed(1)
    targets = []
    for _ in range(2):
        label = torch.randint(0, classes, (4, 4), generator=g).repeat_interleave(16, 0)
        label = label.repeat_interleave(16, 1)
        names = label.unique()
        targets.append({"labels": names, "masks": (label[None] == names[:, None, None]).float()})
    batch = {
        "image": torch.randint(0, 256, (2, 3, 64, 64), generator=g).float(),
        "targets": targets,
    }
    dtypes = []
    handle = model.sem_seg_head.predictor.class_embed.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype)
    )
    with torch.autocast("cpu", dtype=torch.float16):
        loss, _ = module(batch)
    handle.remove()
    assert set(dtypes) == {torch.float32}
    (loss * 1024).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # and fp16 ran: the backbone's activations were half precision
    with torch.autocast("cpu", dtype=torch.float16):
        assert model.backbone(batch["image"][:1] / 255)["res2"].dtype == torch.float16


def build_tiny_for_training():
    import warnings

    import ovseg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ovseg.build_model("ovseg-test-tiny")
