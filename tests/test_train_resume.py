"""Kill-and-resume continues exactly: same losses, same final weights (proposal training,
which has dropout and random augmentation, so the RNG and data position must be restored)."""

import pytest
import torch

import ovseg
from ovseg.train.checkpointing import latest_checkpoint
from ovseg.train.logs import read_csv
from ovseg.train.plots import plot_run
from ovseg.train.proposal_training import train_proposals
from tests.train_fixtures import loop_config, semseg_folder

# the Swin-B recipe (drop path 0.3, colour augmentation, ...) at 64 px
TINY = dict(dataset="folder", crop=64, min_size_train=[48, 64, 80], pad_to=64, backbone_lr_mult=1.0)


class Killed(Exception):
    pass


def kill_at(when: int):
    """A trainer hook that dies right after optimizer step ``when``, like a killed process."""

    def hook(step, row):
        if step == when:
            raise Killed

    return hook


def run(data, out, hooks=(), **kw):
    config = loop_config(out, max_steps=6, checkpoint_every=2, eval_every=3, **kw)
    return train_proposals(
        str(data),
        config,
        model_name="ovseg-test-tiny",
        overrides={"num_queries": 5},
        eval_short_side=64,
        hooks=hooks,
        **TINY,
    )


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    data = semseg_folder(tmp_path / "data", n_train=6)
    full = run(data, tmp_path / "full")

    with pytest.raises(Killed):  # after the step-4 checkpoint, mid-epoch (3 steps per epoch)
        run(data, tmp_path / "killed", hooks=[kill_at(5)])
    assert latest_checkpoint(tmp_path / "killed").name == "step-0000004"
    resumed = run(data, tmp_path / "killed")

    a = read_csv(tmp_path / "full" / "train_log.csv")
    b = read_csv(tmp_path / "killed" / "train_log.csv")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "loss_ce", "loss_mask", "loss_dice", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    ea = read_csv(tmp_path / "full" / "eval_log.csv")
    eb = read_csv(tmp_path / "killed" / "eval_log.csv")
    assert ea == eb and [r["step"] for r in ea] == [0, 3, 6]
    wa = ovseg.load_checkpoint(full).state_dict()
    wb = ovseg.load_checkpoint(resumed).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    png = plot_run(tmp_path / "killed", tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_resume_refuses_other_settings(tmp_path):
    data = semseg_folder(tmp_path / "data", n_train=4)
    with pytest.raises(Killed):
        run(data, tmp_path / "run", hooks=[kill_at(3)])
    with pytest.raises(ValueError, match="other settings"):
        train_proposals(
            str(data),
            loop_config(tmp_path / "run", max_steps=6, checkpoint_every=2, lr=5e-4),
            model_name="ovseg-test-tiny",
            overrides={"num_queries": 5},
            **TINY,
        )
