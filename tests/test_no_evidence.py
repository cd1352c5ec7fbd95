"""No evidence, no label: pixels no surviving mask reaches are unlabelled (255 in the PNG) in
both modes, and the JSON says so; ``ovseg eval`` still scores the official argmax."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ovseg
from ovseg.inference.segmentation import Segmentation
from ovseg.modeling.proposals import Proposals


def test_a_pixel_without_evidence_is_unlabelled_in_eval_mode():
    scores = torch.tensor([[[0.0, 0.2], [0.7, 0.1]], [[0.0, 0.5], [0.3, 0.1]]])  # (2, 2, 2)
    seg = Segmentation.from_scores(["a", "b"], scores, mode="eval")
    # by hand: (0,0) has no evidence; (0,1) b; (1,0) a; (1,1) a tie -> argmax's first, a
    assert seg.label_map.tolist() == [[-1, 1], [0, 0]]
    assert seg.official_label_map.tolist() == [[0, 1], [0, 0]]  # the official argmax
    record = seg.to_json()
    assert record["unlabelled"] == {"value": 255, "area": 1, "no_evidence": 1}
    assert record["no_evidence"] is False
    assert np.asarray(seg.label_image())[0, 0] == 255


class NoMasks:
    """A proposal generator whose masks are all empty: nothing survives the threshold."""

    def __call__(self, image: torch.Tensor) -> Proposals:
        return Proposals(masks=torch.zeros(5, *image.shape[1:]), embeddings=None)


@pytest.mark.parametrize("mode", ["eval", "demo"])
def test_when_no_mask_survives_every_pixel_is_unlabelled(tiny_model, mode, tmp_path):
    predictor = ovseg.Predictor(tiny_model, proposal_generator=NoMasks())
    predictor.set_image(np.full((30, 40, 3), 120, np.uint8))
    seg = predictor.predict(["sky", "tree"], mode=mode)
    assert (seg.label_map == -1).all()  # was class 0 with score 0.0 everywhere in eval mode
    paths = seg.save(tmp_path, "x")
    record = json.loads(paths["json"].read_text())
    assert record["no_evidence"] is True and record["segments"] == []
    assert record["unlabelled"] == {"value": 255, "area": 1200, "no_evidence": 1200}
    from PIL import Image

    assert (np.asarray(Image.open(paths["label_map"])) == 255).all()
