"""Proposal generators: overlap rule, superpixels, SAM (small random), CLI options, Predictor."""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ovseg.inference.spec import SAM_EVAL_OPTIONS
from ovseg.modeling.proposals import Proposals
from ovseg.proposals import build_generator
from ovseg.proposals.overlaps import add_uncovered_mask, owner_map, resolve_overlaps, smallest_wins
from ovseg.proposals.superpixels import SuperpixelProposalGenerator, select_segments
from tests.conftest import DATA, require


def _photo(kind: str, short: int = 320) -> torch.Tensor:
    """A real photo as a (3, H, W) uint8 model input, short side ``short``."""
    folder = {"coco": DATA / "coco-mini" / "train2017", "camvid": DATA / "camvid" / "val"}[kind]
    require(folder)
    files = sorted(folder.rglob("*.jpg")) + sorted(folder.rglob("images/*.png"))
    if not files:
        pytest.skip(f"no photos under {folder}")
    image = Image.open(files[0]).convert("RGB")
    scale = short / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def _assert_valid(
    proposals: Proposals, image: torch.Tensor, max_masks: int | None = None, covers: bool = True
):
    masks = proposals.masks
    assert proposals.embeddings is None
    assert masks.dtype == torch.float32 and masks.shape[1:] == image.shape[1:]
    assert len(masks) >= 1
    assert torch.all((masks == 0) | (masks == 1)), "masks must be binary"
    assert masks.flatten(1).sum(1).min() > 0, "no empty masks"
    if covers:
        assert masks.sum(0).min() >= 1, "every pixel is covered by some mask"
    if max_masks is not None:
        assert len(masks) <= max_masks + 1  # + the mask of uncovered pixels


# ---- the overlap rule, on hand-made masks ----------------------------------------------------


def _nested_masks() -> torch.Tensor:
    """A 4x6 image: 0 = 'building' (left 4 columns), 1 = 'window' inside it, 2 = 'sky'."""
    masks = torch.zeros(3, 4, 6)
    masks[0, :, :4] = 1
    masks[1, 1:3, 1:3] = 1
    masks[2, :, 3:] = 1  # overlaps the building on column 3
    return masks


def test_owner_map_gives_each_pixel_its_smallest_covering_mask():
    masks = _nested_masks()
    masks[:, 3, 5] = 0  # one pixel that nothing covers
    owner = owner_map(masks)
    expected = torch.tensor(
        [
            [0, 0, 0, 2, 2, 2],
            [0, 1, 1, 2, 2, 2],
            [0, 1, 1, 2, 2, 2],
            [0, 0, 0, 2, 2, -1],
        ]
    )
    # building area 16 > sky area 11 (after the hole) > window 4: sky wins column 3
    assert torch.equal(owner, expected)


def test_owner_map_ties_go_to_the_later_mask():
    masks = torch.zeros(2, 2, 2)
    masks[0, 0] = 1
    masks[1, :, 0] = 1  # same area (2), overlapping at (0, 0)
    assert owner_map(masks)[0, 0] == 1


def test_smallest_wins_is_a_partition_and_drops_hidden_masks():
    masks = _nested_masks()
    hidden = torch.zeros(1, 4, 6)
    hidden[0, 1:3, 1:3] = 1  # same as the window, painted before it
    empty = torch.zeros(1, 4, 6)
    painted = smallest_wins(torch.cat([hidden, masks, empty]))
    assert painted.shape == (3, 4, 6)
    assert torch.equal(painted.sum(0), torch.ones(4, 6))
    assert torch.equal(painted[2], masks[2])  # sky keeps column 3
    assert painted[0].sum() == 16 - 4 - 4  # building minus window minus column 3
    assert torch.equal(painted[1], masks[1])


def test_add_uncovered_mask():
    masks = _nested_masks()[1:2]  # the window alone
    out = add_uncovered_mask(masks)
    assert out.shape == (2, 4, 6)
    assert torch.equal(out[1], 1 - masks[0])
    assert add_uncovered_mask(out).shape == (2, 4, 6)  # nothing left to cover
    assert add_uncovered_mask(masks, min_area=100).shape == (1, 4, 6)
    assert add_uncovered_mask(torch.zeros(0, 2, 3)).shape == (1, 2, 3)


def test_fusion_of_nested_masks_under_both_rules():
    """The window mask must win its pixels only under smallest_wins."""
    masks = _nested_masks()
    # class probabilities per mask over (building, window, sky): the building mask is sure,
    # the window mask less so; under a plain sum the building outvotes the window.
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.0, 0.0, 1.0]])

    def fuse(p, m):
        try:
            from ovseg.modeling.fusion import semantic_fusion
        except ImportError:
            return torch.einsum("nk,nhw->khw", p, m)
        return semantic_fusion(p, m)

    summed = fuse(probs, resolve_overlaps(masks, "sum")).argmax(0)
    assert summed[1, 1] == 0  # window pixels: 0.9 + 0.4 (building) > 0.1 + 0.6 (window)
    painted = resolve_overlaps(masks, "smallest_wins")
    labels = fuse(probs, painted).argmax(0)
    assert torch.equal(labels[1:3, 1:3], torch.ones(2, 2, dtype=torch.long))
    assert torch.equal(labels[:, 3:], torch.full((4, 3), 2))
    assert labels[0, 0] == 0
    with pytest.raises(ValueError, match="smallest_wins"):
        resolve_overlaps(masks, "largest")


# ---- superpixels ------------------------------------------------------------------------------


def test_select_segments_keeps_a_repeated_segment_once():
    a = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    b = np.array([[0, 0, 1, 2], [0, 0, 1, 2]])  # segment 0 repeats; a's 1 splits in two
    kept = select_segments([a, b], dedup_iou=0.9, max_masks=None)
    assert kept == [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert select_segments([a, b], dedup_iou=0.9, max_masks=2) == [(0, 0), (0, 1)]


@pytest.mark.parametrize("kind", ["coco", "camvid"])
def test_superpixels_on_real_photos(kind):
    image = _photo(kind)
    proposals = SuperpixelProposalGenerator(max_masks=40)(image)
    _assert_valid(proposals, image, max_masks=40)
    masks = proposals.masks.flatten(1)
    inter = masks @ masks.T
    area = masks.sum(1)
    iou = inter / (area[:, None] + area[None] - inter)
    iou.fill_diagonal_(0)
    assert iou.max() < 0.9, "duplicates across scales are removed"
    assert len(proposals) > 10, "a real photo gives many segments"


def test_superpixels_reject_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        SuperpixelProposalGenerator()(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="scales"):
        SuperpixelProposalGenerator(scales=())


# ---- SAM ----------------------------------------------------------------------------------------


def _tiny_sam_generator(**options):
    pytest.importorskip("segment_anything")
    options = {"model_type": "test_tiny", "points_per_side": 4, **options}
    return build_generator("sam", None, **options)


@pytest.mark.parametrize("kind", ["coco", "camvid"])
def test_sam_tiny_on_real_photos(kind):
    image = _photo(kind)
    proposals = _tiny_sam_generator(overlap="smallest_wins", fill_uncovered=True)(image)
    _assert_valid(proposals, image)
    assert torch.equal(proposals.masks.sum(0), torch.ones(image.shape[1:]))  # smallest_wins


def test_sam_defaults_keep_every_mask_as_sam_gives_it():
    """The space's defaults: SAM's masks, in SAM's order, overlapping, no uncovered mask."""
    pytest.importorskip("segment_anything")
    image = _photo("camvid")
    generator = _tiny_sam_generator()
    assert (generator.overlap, generator.fill_uncovered, generator.long_side) == (
        "sum",
        False,
        1280,
    )
    proposals = generator(image)
    _assert_valid(proposals, image, covers=False)
    records = generator.amg.generate(image.permute(1, 2, 0).numpy())
    expected = torch.stack([torch.from_numpy(r["segmentation"]) for r in records if r["area"]])
    assert torch.equal(proposals.masks, expected.float())
    assert proposals.masks.sum(0).max() > 1, "the tiny SAM's masks overlap on this photo"


def test_sam_sum_rule_and_max_masks():
    image = _photo("camvid")
    proposals = _tiny_sam_generator(overlap="sum", fill_uncovered=False, max_masks=1)(image)
    assert len(proposals) == 1


def test_load_sam_reads_the_type_from_the_checkpoint(tmp_path):
    pytest.importorskip("segment_anything")
    from ovseg.proposals.sam import build_sam_test_tiny, load_sam

    sam = build_sam_test_tiny(seed=3)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    loaded = load_sam(path)
    for (name, a), b in zip(sam.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="holds a 'test_tiny' model"):
        load_sam(path, model_type="vit_b")
    with pytest.raises(ValueError, match="choose one of"):
        load_sam(path, model_type="vit_x")
    with pytest.raises(FileNotFoundError):
        load_sam(tmp_path / "missing.pth")
    torch.save({"args": argparse.Namespace(x=1)}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="cannot read SAM checkpoint"):
        load_sam(tmp_path / "pickled.pth")  # arbitrary objects are never unpickled
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a SAM checkpoint"):
        load_sam(tmp_path / "other.pth")


def test_load_sam_builds_official_variants_on_the_meta_device():
    """vit_b without allocating 90M random weights: the meta build takes the file's tensors."""
    sa = pytest.importorskip("segment_anything")
    from ovseg.proposals.sam import _restore_pixel_stats, infer_sam_model_type

    with torch.device("meta"):
        sam = sa.sam_model_registry["vit_b"]()
    state = sam.state_dict()
    assert infer_sam_model_type(state) == "vit_b"
    state = {k: torch.zeros(v.shape) for k, v in state.items()}
    sam.load_state_dict(state, strict=True, assign=True)
    _restore_pixel_stats(sam)
    assert not any(t.is_meta for t in [*sam.parameters(), *sam.buffers()])


def test_sam_without_weights_is_a_clear_error():
    pytest.importorskip("segment_anything")
    with pytest.raises(ValueError, match="--sam-checkpoint"):
        build_generator("sam", None)


# ---- command-line options -------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    from ovseg.cli._proposals import add_proposal_args

    parser = argparse.ArgumentParser()
    add_proposal_args(parser)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def proposal_generator_from_args(args, model):
    from ovseg.cli._spec import proposal_source

    return proposal_source(args).build(model)


def test_cli_builds_each_generator(tiny_model):
    assert proposal_generator_from_args(_parse([]), tiny_model) is None
    argv = ["--proposals", "superpixels", "--superpixel-scales", "50,500", "--max-proposals", "7"]
    gen = proposal_generator_from_args(_parse(argv), tiny_model)
    assert isinstance(gen, SuperpixelProposalGenerator)
    assert gen.scales == (50.0, 500.0) and gen.max_masks == 7 and gen.overlap == "sum"
    pytest.importorskip("segment_anything")
    from ovseg.proposals.sam import SamProposalGenerator

    argv = ["--proposals", "sam", "--sam-model-type", "test_tiny", "--sam-points-per-side", "2"]
    gen = proposal_generator_from_args(_parse(argv), tiny_model)
    assert isinstance(gen, SamProposalGenerator) and gen.overlap == "sum"  # the space
    assert not gen.fill_uncovered and gen.long_side == 1280
    from ovseg.cli._spec import proposal_source

    gen = proposal_source(_parse(argv)).build(tiny_model, "eval")
    assert gen.overlap == "smallest_wins" and gen.fill_uncovered and gen.long_side is None
    argv += ["--proposal-overlap", "sum"]
    assert proposal_source(_parse(argv)).build(tiny_model, "eval").overlap == "sum"


def test_cli_rejects_options_of_another_generator(tiny_model):
    with pytest.raises(ValueError, match="--sam-checkpoint does not apply to --proposals sup"):
        proposal_generator_from_args(
            _parse(["--proposals", "superpixels", "--sam-checkpoint", "x.pth"]), tiny_model
        )
    with pytest.raises(ValueError, match="--max-proposals does not apply"):
        proposal_generator_from_args(_parse(["--max-proposals", "3"]), tiny_model)
    with pytest.raises(SystemExit):
        _parse(["--superpixel-scales", "a,b"])


# ---- through the Predictor --------------------------------------------------------------------


class FixedMasks:
    """A generator that returns the same masks for any image (as a ground-truth oracle does)."""

    def __init__(self, masks: torch.Tensor):
        self.masks = masks

    def __call__(self, image: torch.Tensor) -> Proposals:
        assert image.shape[1:] == self.masks.shape[1:]
        return Proposals(masks=self.masks.to(image.device), embeddings=None)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


NAMES = ["road", "sky", "building", "tree", "car"]


def test_sam_end_to_end_through_the_predictor(tiny_model):
    import ovseg

    model = tiny_model
    image = _photo("camvid")
    predictor = ovseg.Predictor(model, proposal_generator=_tiny_sam_generator(**SAM_EVAL_OPTIONS))
    predictor.set_image(_hwc(image))
    seg = predictor.predict(NAMES)
    assert seg.sem_seg.shape == (len(NAMES), *image.shape[1:])
    # smallest_wins + the uncovered mask partition the image and each mask's CLIP
    # probabilities sum to 1, so every pixel's scores sum to 1: no pixel is left unlabelled.
    assert torch.allclose(seg.sem_seg.sum(0), torch.ones(image.shape[1:]), atol=1e-5)
    assert seg.label_map.shape == tuple(image.shape[1:])
    assert seg.label_map.min() >= 0 and seg.label_map.max() < len(NAMES)


def test_same_masks_give_same_clip_outputs_whichever_generator(tiny_model):
    """The CLIP branch and the fusion see only the masks: where they come from cannot matter."""
    import ovseg

    model = tiny_model
    image = _photo("camvid")
    superpixels = SuperpixelProposalGenerator(max_masks=20)

    def run(generator, **kwargs):
        predictor = ovseg.Predictor(model, proposal_generator=generator)
        predictor.set_image(_hwc(image))
        return predictor.predict(NAMES, **kwargs).sem_seg

    # The predictor hands the generator the resized model input; record it to fix the masks.
    seen: list[torch.Tensor] = []

    def recording(img: torch.Tensor) -> Proposals:
        seen.append(img)
        return superpixels(img)

    reference = run(recording)
    assert torch.allclose(run(FixedMasks(superpixels(seen[0]).masks)), reference)

    # The MaskFormer head's own masks without its embeddings = the head in CLIP-only mode.
    def head_masks_only(img: torch.Tensor) -> Proposals:
        return Proposals(masks=model.propose(img).masks, embeddings=None)

    clip_only = run(None, clip_only=True)
    assert torch.allclose(run(head_masks_only), clip_only, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        ["--proposals", "superpixels", "--max-proposals", "20"],
        ["--proposals", "sam", "--sam-model-type", "test_tiny", "--sam-points-per-side", "4"],
    ],
)
def test_segment_command_with_each_generator(tmp_path, options):
    from ovseg.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray(_hwc(_photo("camvid", short=160))).save(photo)
    argv = ["segment", str(photo), "--classes", ", ".join(NAMES), "--model", "ovseg-test-tiny"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random tiny weights
        assert main([*argv, "--out", str(tmp_path / "out"), *options]) == 0
    label = np.array(Image.open(tmp_path / "out" / "photo.png"))
    assert label.shape == (160, 213)
