"""Mask prompt tuning: patch keep flags by hand, prompts replace only background patches."""

from __future__ import annotations

import torch

from ovseg.modeling.clip_branch import ClipArch, MaskAdaptedCLIP, patch_keep_flags

ARCH = ClipArch(
    embed_dim=16,
    image_size=32,
    patch_size=8,
    vision_width=64,
    vision_layers=3,
    context_length=77,
    vocab_size=49408,
    text_width=64,
    text_layers=1,
)


def test_keep_flag_is_one_if_any_pixel_of_the_patch_is_inside():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, 0] = 1  # one pixel of patch (0, 0)
    mask[0, 0, 3, 2:4] = 1  # two pixels of patch (1, 1)
    flags = patch_keep_flags(mask, 2)
    assert flags.shape == (1, 4, 1)
    assert flags.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]


def make_clip(seed=0):
    torch.manual_seed(seed)
    clip = MaskAdaptedCLIP(ARCH, prompt_depth=3).eval()
    return clip


@torch.no_grad()
def test_full_mask_equals_plain_open_clip_encoder():
    clip = make_clip()
    images = torch.randn(2, 3, 32, 32)
    ours = clip.encode_masked(images, torch.ones(2, 1, 32, 32))
    plain = clip.clip_model.encode_image(images)
    assert torch.allclose(ours, plain, atol=1e-5)
    assert torch.allclose(clip.encode_masked(images, None), plain, atol=1e-5)


@torch.no_grad()
def test_prompts_replace_background_patches_only():
    clip = make_clip()
    images = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :8, :8] = 1  # keep only the first patch
    base = clip.encode_masked(images, mask)
    # Changing pixels of a dropped patch does not change the output ...
    changed = images.clone()
    changed[..., 16:, 16:] += 5
    assert torch.allclose(clip.encode_masked(changed, mask), base, atol=1e-6)
    # ... changing the kept patch does, and so does changing any of the deep prompts.
    changed = images.clone()
    changed[..., :8, :8] += 5
    assert not torch.allclose(clip.encode_masked(changed, mask), base, atol=1e-4)
    prompts = clip.clip_model.visual.mask_embedding
    for depth in range(3):
        saved = prompts[depth].clone()
        prompts[depth] += torch.randn_like(saved)
        assert not torch.allclose(clip.encode_masked(images, mask), base, atol=1e-4)
        prompts[depth] = saved


def test_prompts_get_gradients_and_one_valid_mask_works():
    clip = make_clip()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 8:20] = 1
    clip.encode_masked(torch.randn(1, 3, 32, 32), mask).sum().backward()
    grad = clip.clip_model.visual.mask_embedding.grad
    assert grad.shape == (3, 16, 64) and all(grad[d].abs().sum() > 0 for d in range(3))
    assert grad[:, 5].abs().sum() == 0  # patch (1, 1) is kept: its prompts are unused
