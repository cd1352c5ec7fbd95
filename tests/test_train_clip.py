"""CLIP adaptation: MPT touches only the prompts, FT never the text tower; pairs reader."""

import math

import pytest
import torch

import ovseg
from ovseg.train.clip_adaptation import PROMPT_KEY, ClipOptions, train_clip
from ovseg.train.logs import read_csv
from ovseg.train.pairs import PairDataset
from ovseg.weights.checkpoints import read_metadata
from tests.train_fixtures import (
    NOUNS,
    loop_config,
    make_tiny_model,
    pairs_folder,
    tiny_checkpoint,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    return tiny_checkpoint(root / "init.safetensors"), pairs_folder(root / "pairs"), root


def test_pair_dataset_reads_mining_format(setup):
    _, pairs, _ = setup
    ds = PairDataset(pairs)
    assert len(ds) == 8 and ds.vocabulary == sorted(NOUNS)
    item = ds[1]
    assert item["crop"].shape == (3, 224, 224) and item["mask"].shape == (1, 224, 224)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert ds.vocabulary[item["label"]] == NOUNS[1]


def test_mpt_changes_only_the_prompts(setup):
    init, pairs, root = setup
    path = train_clip(pairs, init, "mpt", loop_config(root / "mpt", lr=2e-2))
    before = ovseg.load_checkpoint(init).state_dict()
    after = ovseg.load_checkpoint(path).state_dict()
    assert set(before) == set(after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [PROMPT_KEY]
    meta = read_metadata(path)
    assert meta["clip_adaptation"] == "mpt"
    # the official MPT trains the logit scale; it is restored in the model, kept in metadata
    scale = before["clip_adapter.clip_model.logit_scale"].item()
    assert float(meta["trained_logit_scale"]) != pytest.approx(scale, abs=1e-6)
    assert len(read_csv(root / "mpt" / "train_log.csv")) == 3


def test_ft_keeps_the_text_tower_and_mpt_ft_needs_ft(setup):
    init, pairs, root = setup
    path = train_clip(pairs, init, "ft", loop_config(root / "ft", lr=1e-3, weight_decay=0.2))
    before = ovseg.load_checkpoint(init).state_dict()
    ft = ovseg.load_checkpoint(path)
    after = ft.state_dict()
    visual = "clip_adapter.clip_model.visual."
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    scale = "clip_adapter.clip_model.logit_scale"  # official FT trains it (not locked)
    assert scale in changed
    assert all(k.startswith(visual) and k != PROMPT_KEY for k in changed - {scale})
    assert visual + "conv1.weight" in changed
    assert ft.config.mask_prompt_fwd is False  # untrained prompts are not used after FT
    with pytest.raises(ValueError, match="FT checkpoint"):
        train_clip(pairs, init, "mpt+ft", loop_config(root / "bad"))
    both = train_clip(pairs, path, "mpt+ft", loop_config(root / "ftmpt", lr=2e-2))
    final = ovseg.load_checkpoint(both)
    changed = [k for k, v in final.state_dict().items() if not torch.equal(v, after[k])]
    assert changed == [PROMPT_KEY] and final.config.mask_prompt_fwd is True
    assert read_metadata(both)["clip_adaptation"] == "ft+mpt"


def test_gradient_accumulation_equals_the_large_batch(setup):
    # with a per-sample loss (vocabulary-ce); the contrastive batch is the micro-batch
    init, pairs, root = setup
    options = ClipOptions(loss="vocabulary-ce", logit_scale="fixed-100")
    one = train_clip(
        pairs, init, "mpt", loop_config(root / "b4", batch_size=4, max_steps=2), options
    )
    acc = train_clip(
        pairs,
        init,
        "mpt",
        loop_config(root / "b2x2", batch_size=2, accum_steps=2, max_steps=2),
        options,
    )
    a = read_csv(root / "b4" / "train_log.csv")
    b = read_csv(root / "b2x2" / "train_log.csv")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    pa = ovseg.load_checkpoint(one).state_dict()[PROMPT_KEY]
    pb = ovseg.load_checkpoint(acc).state_dict()[PROMPT_KEY]
    # Adam divides by sqrt(v): near-zero gradients amplify rounding (steps move up to 2e-3)
    torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_prompt_depth_is_configurable():
    from ovseg.train.clip_adaptation import prepare_for_mode
    from tests.train_fixtures import make_tiny_model

    model = make_tiny_model()
    params = prepare_for_mode(model, "mpt", prompt_depth=2)
    prompts = model.clip_adapter.clip_model.visual.mask_embedding
    assert params == [prompts] and prompts.shape == (2, 196, 128)
    assert model.config.prompt_depth == 2 and model.clip_adapter.prompt_depth == 2
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [PROMPT_KEY]
    with pytest.raises(ValueError, match="prompt depth"):
        prepare_for_mode(make_tiny_model(), "mpt", prompt_depth=9)


def test_logit_scale_is_clamped_after_every_step(tmp_path):
    # init above ln 100: the official clamp brings it into [0, ln 100] after the first step
    model = make_tiny_model()
    with torch.no_grad():
        model.clip_adapter.clip_model.logit_scale.fill_(5.0)
    init = ovseg.save_checkpoint(model, tmp_path / "init.safetensors")
    pairs = pairs_folder(tmp_path / "pairs")
    rows = []
    path = train_clip(
        pairs,
        init,
        "ft",
        loop_config(tmp_path / "ft", lr=1e-4),
        hooks=[lambda s, r: rows.append(r)],
    )
    final = ovseg.load_checkpoint(path).clip_adapter.clip_model.logit_scale.item()
    assert final <= math.log(100) + 1e-6
    # the first step ran with exp(5.0), the later ones with the clamped value
    assert rows[0]["logit_scale"] == pytest.approx(math.exp(5.0), rel=1e-5)
    assert all(r["logit_scale"] <= 100 * (1 + 1e-5) for r in rows[1:])


@pytest.mark.slow  # a torchrun launch of two processes: ~15 s
def test_contrastive_batch_is_gathered_over_processes(setup, tmp_path):
    # official ClipLoss gathers every process's features: 2 processes x batch 2 compute the
    # loss of one process with batch 4 (the loss is invariant to the order of the pairs)
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.test_train_distributed import free_port

    init, pairs, _ = setup
    options = ["--recipe", "mpt-vitL14", "--pairs", str(pairs), "--init", str(init),
               "--max-steps", "2", "--warmup-steps", "0", "--lr", "1e-3", "--precision", "fp32", "--device", "cpu",
               "--log-every", "1", "--no-progress"]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    one = [sys.executable, "-m", "ovseg", "train-clip", "--out", str(tmp_path / "one"),
           "--batch-size", "4", *options]  # fmt: skip
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "ovseg", "train-clip", "--out", str(tmp_path / "two"), "--batch-size", "2",
           *options]  # fmt: skip
    for cmd in (one, two):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    a = read_csv(tmp_path / "one" / "train_log.csv")
    b = read_csv(tmp_path / "two" / "train_log.csv")
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-5)
    # DDP averages the per-process gradients (each 1/2 of the full one, as officially);
    # Adam's first steps hardly depend on that scale
    assert a[1]["loss"] == pytest.approx(b[1]["loss"], rel=1e-3)


def test_resume_refuses_other_clip_options(setup, tmp_path):
    init, pairs, _ = setup
    config = loop_config(tmp_path / "run", max_steps=2, checkpoint_every=1)
    train_clip(pairs, init, "mpt", config)
    with pytest.raises(ValueError, match="other CLIP options"):
        train_clip(pairs, init, "mpt", config, ClipOptions(loss="vocabulary-ce"))


def test_a_run_shorter_than_the_warmup_warms_up_over_all_its_steps(setup, tmp_path, capsys):
    import json

    init, pairs, _ = setup
    train_clip(pairs, init, "mpt", loop_config(tmp_path / "run", max_steps=2, warmup_steps=100))
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["warmup_steps"] == 2
    assert "warming up over 2 steps" in capsys.readouterr().err
