"""Backbone shapes and padding paths, frozen batch norm by hand."""

from __future__ import annotations

import torch

from ovseg.modeling.resnet import FrozenBatchNorm2d, ResNetDeepLab
from ovseg.modeling.swin import SwinTransformer, relative_position_index, shifted_window_mask


def test_swin_any_input_size():
    torch.manual_seed(0)
    swin = SwinTransformer(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=7)
    with torch.no_grad():
        out = swin(torch.randn(1, 3, 101, 130))  # not multiples of the patch or window
    sizes = {k: tuple(v.shape) for k, v in out.items()}
    assert sizes == {
        "res2": (1, 8, 26, 33),
        "res3": (1, 16, 13, 17),
        "res4": (1, 32, 7, 9),
        "res5": (1, 64, 4, 5),
    }


def test_relative_index_and_shift_mask_by_hand():
    idx = relative_position_index(2)  # 2x2 window: offsets in {-1, 0, 1}^2 -> 0..8
    assert idx.tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    mask = shifted_window_mask(4, 4, 2, 1, "cpu")  # 4 windows of 2x2
    assert mask.shape == (4, 4, 4)
    assert mask[0].abs().sum() == 0  # the top-left window lies inside one region
    assert mask[3][0].tolist() == [0.0, -100.0, -100.0, -100.0]  # four regions meet there


def test_resnet101c_strides_channels_and_dilation():
    net = ResNetDeepLab(depth=50, stem_channels=16, res2_channels=32, width_per_group=8)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 32, 16, 24),
        "res3": (1, 64, 8, 12),
        "res4": (1, 128, 4, 6),
        "res5": (1, 256, 2, 3),
    }
    assert [b.conv2.dilation[0] for b in net.res5] == [1, 2, 4]
    assert [b.conv2.stride[0] for b in net.res5] == [2, 1, 1]  # stride in the 3x3, not the 1x1
    assert net.stem.conv1.out_channels == 8 and net.stem.conv3.out_channels == 16


def test_frozen_batch_norm_by_hand():
    bn = FrozenBatchNorm2d(2, eps=0.0)
    bn.weight.copy_(torch.tensor([2.0, 1.0]))
    bn.bias.copy_(torch.tensor([1.0, 0.0]))
    bn.running_mean.copy_(torch.tensor([3.0, -1.0]))
    bn.running_var.copy_(torch.tensor([4.0, 1.0]))
    x = torch.tensor([5.0, 1.0]).view(1, 2, 1, 1)
    assert bn(x).flatten().tolist() == [3.0, 2.0]  # (5-3)/2*2+1, (1+1)/1*1+0
