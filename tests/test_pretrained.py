"""Our checkpoints in the Hub's conventions: save_pretrained -> folder or (stand-in) Hub ->
from_pretrained gives the same model; the model card; push_to_hub; hf:// on the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

import ovseg
from ovseg.weights.pretrained import parse_hf_ref

CLASSES = ["sky", "tree", "road"]


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)


def _segment(model, image) -> torch.Tensor:
    predictor = ovseg.Predictor(model)
    predictor.set_image(image)
    return predictor.predict(CLASSES).sem_seg


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained") / "ovseg-tiny"
    tiny_model.provenance = {
        "provenance": "trained on coco-mini",
        "recipe": "MPT, lr 2e-2, 5 epochs",
        "license": "CC BY-NC 4.0",
        "eval_results": {"ADE20K-150 mIoU": 1.5},
    }
    try:
        tiny_model.save_pretrained(folder)
    finally:
        tiny_model.provenance = {}
    return folder


def test_save_pretrained_writes_the_hub_files(saved, tiny_model):
    assert sorted(p.name for p in saved.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((saved / "config.json").read_text())
    assert ovseg.OVSegConfig.from_dict(config) == tiny_model.config
    # the weights file is also our own checkpoint format
    assert _same_weights(ovseg.load_checkpoint(saved / "model.safetensors"), tiny_model)


def test_model_card_front_matter_and_sections(saved):
    card = ModelCard.load(saved / "README.md")
    assert card.data.license == "cc-by-nc-4.0"
    assert card.data.library_name == "ovseg"
    assert card.data.pipeline_tag == "image-segmentation"
    text = card.text
    assert "Swin (embed 16" in text and "CLIP ViT (width 128" in text  # the variant
    assert "trained on coco-mini" in text and "MPT, lr 2e-2" in text  # provenance, recipe
    assert "non-commercial" in text and "code is MIT" in text
    assert "| ADE20K-150 mIoU | 1.5 |" in text


def test_local_folder_round_trip_gives_the_same_outputs(saved, tiny_model, image):
    loaded = ovseg.OVSeg.from_pretrained(saved)
    assert _same_weights(loaded, tiny_model)
    assert loaded.provenance["license"] == "CC BY-NC 4.0"
    assert torch.equal(_segment(loaded, image), _segment(tiny_model, image))
    assert _same_weights(ovseg.build_model(str(saved)), tiny_model)  # a folder as --model


def test_hub_round_trip_gives_the_same_outputs(saved, tiny_model, image, fake_hub):
    fake_hub.add_folder("someone/ovseg-tiny", saved)
    loaded = ovseg.OVSeg.from_pretrained("someone/ovseg-tiny")
    assert torch.equal(_segment(loaded, image), _segment(tiny_model, image))
    assert _same_weights(ovseg.build_model("hf://someone/ovseg-tiny@v1.0"), tiny_model)
    paths = [path for _, path, _ in fake_hub.requests]
    assert "/someone/ovseg-tiny/resolve/v1.0/model.safetensors" in paths  # the revision asked


@pytest.fixture(scope="module")
def other_saved(tiny_model, tmp_path_factory):
    """The tiny model with other weights, saved."""
    import copy

    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.clip_adapter.non_object_embedding.add_(1.0)
    folder = tmp_path_factory.mktemp("pretrained-other") / "ovseg-tiny"
    other.save_pretrained(folder)
    return folder


def test_hf_uri_means_the_hub_never_a_local_folder(
    saved, other_saved, tiny_model, fake_hub, tmp_path, monkeypatch
):
    fake_hub.add_folder("someone/ovseg-tiny", saved)
    local = tmp_path / "someone" / "ovseg-tiny"  # a folder named like the repository
    local.parent.mkdir()
    shutil.copytree(other_saved, local)
    monkeypatch.chdir(tmp_path)
    assert _same_weights(ovseg.build_model("hf://someone/ovseg-tiny"), tiny_model)
    assert not _same_weights(ovseg.build_model("someone/ovseg-tiny"), tiny_model)  # the folder


def test_hf_uri_revision_is_honoured(saved, other_saved, tiny_model, fake_hub):
    fake_hub.add_folder("someone/ovseg-tiny", saved)
    fake_hub.add_folder("someone/ovseg-tiny", other_saved, revision="v2")
    assert _same_weights(ovseg.build_model("hf://someone/ovseg-tiny"), tiny_model)
    assert not _same_weights(ovseg.build_model("hf://someone/ovseg-tiny@v2"), tiny_model)
    assert _same_weights(ovseg.build_model("hf://someone/ovseg-tiny@main"), tiny_model)


def test_hub_weights_damaged_in_the_cache_are_refused(saved, fake_hub):
    import os

    from ovseg.weights.verify import ChecksumMismatch

    fake_hub.add_folder("someone/ovseg-tiny", saved)
    ovseg.build_model("hf://someone/ovseg-tiny")
    from huggingface_hub import try_to_load_from_cache

    blob = os.path.realpath(try_to_load_from_cache("someone/ovseg-tiny", "model.safetensors"))
    data = bytearray(open(blob, "rb").read())
    data[-100] ^= 0xFF  # one flipped byte in a tensor
    open(blob, "wb").write(bytes(data))
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
        ovseg.build_model("hf://someone/ovseg-tiny")


def test_cli_model_option_takes_hf_uris(saved, tiny_model, fake_hub):
    import argparse

    from ovseg.cli._common import add_model_args
    from ovseg.cli._spec import model_source

    fake_hub.add_folder("someone/ovseg-tiny", saved)
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    model = model_source(parser.parse_args(["--model", "hf://someone/ovseg-tiny"])).load()
    assert _same_weights(model, tiny_model)
    with pytest.raises(ValueError, match="carries its own weights"):
        argv = ["--model", "hf://someone/ovseg-tiny", "--checkpoint", "x.pth"]
        model_source(parser.parse_args(argv)).load()


def test_missing_repository_or_config_is_a_clear_error(fake_hub, tmp_path):
    with pytest.raises(ValueError, match="no config.json in this Hub repository"):
        ovseg.OVSeg.from_pretrained("nobody/nothing")
    with pytest.raises(ValueError, match="no config.json in this folder"):
        ovseg.OVSeg.from_pretrained(tmp_path)


def test_weights_that_do_not_fit_the_config_are_refused(saved, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    config = json.loads((saved / "config.json").read_text())
    config["num_queries"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="shape mismatch"):
        ovseg.OVSeg.from_pretrained(folder)


def test_push_to_hub_uploads_the_three_files(tiny_model, monkeypatch):
    from huggingface_hub import hub_mixin

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded["repo"] = repo_id
            uploaded["files"] = {p.name: p.read_bytes() for p in folder_path.iterdir()}
            return f"https://hub/{repo_id}/commit/1"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    url = tiny_model.push_to_hub("me/ovseg-tiny", model_card_kwargs={"license": "MIT"})
    assert url == "https://hub/me/ovseg-tiny/commit/1" and uploaded["repo"] == "me/ovseg-tiny"
    assert sorted(uploaded["files"]) == ["README.md", "config.json", "model.safetensors"]
    readme = uploaded["files"]["README.md"].decode()
    assert "license: mit" in readme and 'from_pretrained("me/ovseg-tiny")' in readme


def test_parse_hf_ref():
    assert parse_hf_ref("hf://a/b") == ("a/b", None)
    assert parse_hf_ref("hf://a/b@main") == ("a/b", "main")
    assert parse_hf_ref("ovseg-test-tiny") is None
    for bad in ("hf://a", "hf://a/b/c", "hf://a/b@", "hf:///b"):
        with pytest.raises(ValueError, match="hf://OWNER/REPO"):
            parse_hf_ref(bad)
