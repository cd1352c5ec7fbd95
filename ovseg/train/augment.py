"""The official training augmentation of the proposal model, as plain array transforms.

The official dataset mapper (``MaskFormerSemanticDatasetMapper``) applies, in this order:

1. ``ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, "choice")``: the short side becomes
   one of the listed sizes, chosen uniformly, unless the long side would exceed the maximum;
   the image is resized bilinearly (PIL, uint8), the label with ``F.interpolate(nearest)``
   (detectron2 resizes non-uint8 arrays with torch);
2. ``RandomCrop_CategoryAreaConstraint("absolute", CROP.SIZE, SINGLE_CATEGORY_MAX_AREA)``: a
   uniform ``min(crop, h) x min(crop, w)`` window; when the maximum area is below 1, up to 10
   windows are drawn until one holds at least two categories and the largest (ignore not
   counted) covers less than that share of the counted pixels; else the last one is kept;
3. ``ColorAugSSDTransform`` (image only): random brightness, contrast, saturation and hue
   (SSD's photometric distortion, saturation and hue in OpenCV's 8-bit HSV);
4. ``RandomFlip``: horizontal, probability 0.5, image and label together;
5. padding to exactly ``SIZE_DIVISIBILITY`` (bottom/right): image with 128, label with
   ignore. This happens on the uint8 image, *before* normalisation.

Every random draw comes from the ``numpy.random.Generator`` passed in, so a sample is fixed by
the seed it is built from (``SemSegTrainSet`` uses (seed, epoch, index)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovseg.data.datasets import IGNORE_LABEL as IGNORE


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w): short side ``short``, long side at most ``max_size`` (detectron2's
    ``ResizeShortestEdge.get_output_shape``, rounding half up)."""
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > max_size:
        scale = max_size / max(nh, nw)
        nh, nw = nh * scale, nw * scale
    return int(nh + 0.5), int(nw + 0.5)


def resize_pair(image: np.ndarray, label: np.ndarray, height: int, width: int):
    """Bilinear image (uint8, PIL), nearest label (int64, ``F.interpolate`` nearest)."""
    if image.shape[:2] == (height, width):
        return image, label
    im = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    lab = torch.from_numpy(label.astype(np.float64))[None, None]
    lab = F.interpolate(lab, size=(height, width), mode="nearest")[0, 0]
    return im, lab.numpy().astype(np.int64)


def crop_window(
    label: np.ndarray, crop: int, max_area: float, rng: np.random.Generator, tries: int = 10
) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of a random crop, with the single-category area limit (see module)."""
    h, w = label.shape
    ch, cw = min(crop, h), min(crop, w)
    for _ in range(1 if max_area >= 1.0 else tries):
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        if max_area >= 1.0:
            break
        classes, counts = np.unique(label[y0 : y0 + ch, x0 : x0 + cw], return_counts=True)
        counts = counts[classes != IGNORE]
        if len(counts) > 1 and counts.max() < counts.sum() * max_area:
            break
    return y0, x0, ch, cw


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV with OpenCV's 8-bit ranges (H in [0, 180), S and V in [0, 255])."""
    x = image.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    delta = v - x.min(-1)
    s = np.where(v > 0, 255.0 * delta / np.maximum(v, 1), 0.0)
    d = np.maximum(delta, 1e-6)
    h = np.where(
        v == r, 60 * (g - b) / d, np.where(v == g, 120 + 60 * (b - r) / d, 240 + 60 * (r - g) / d)
    )
    h = np.where(delta > 0, h, 0.0) % 360
    hsv = np.stack([np.round(h / 2) % 180, np.round(s), v], -1)
    return hsv.astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hsv`` (OpenCV's 8-bit HSV -> RGB), rounded to uint8."""
    h = hsv[..., 0].astype(np.float32) * 2 / 60
    s = hsv[..., 1].astype(np.float32) / 255
    v = hsv[..., 2].astype(np.float32)
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(hsv.shape, np.float32)
    for k, channels in enumerate(table):
        mask = sector == k
        for c in range(3):
            rgb[..., c][mask] = channels[c][mask]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_aug_ssd(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast: tuple[float, float] = (0.5, 1.5),
    saturation: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """SSD's photometric distortion with detectron2's ``ColorAugSSDTransform`` defaults:
    brightness (p 0.5, +U(-32, 32)), then contrast (p 0.5, xU(0.5, 1.5)) either first or last
    (p 0.5), saturation (p 0.5, S xU(0.5, 1.5)) and hue (p 0.5, H + randint(-18, 18) mod 180).
    Each step clips to [0, 255] and truncates to uint8."""

    def brightness(img):
        if rng.integers(2):
            return _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
        return img

    def contrast_(img):
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*contrast))
        return img

    def saturation_(img):
        if rng.integers(2):
            hsv = rgb_to_hsv(img)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation))
            return hsv_to_rgb(hsv)
        return img

    def hue(img):
        if rng.integers(2):
            hsv = rgb_to_hsv(img)
            shift = int(rng.integers(-hue_delta, hue_delta + 1))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 180
            return hsv_to_rgb(hsv)
        return img

    image = brightness(image)
    steps = (contrast_, saturation_, hue) if rng.integers(2) else (saturation_, hue, contrast_)
    for step in steps:
        image = step(image)
    return image


def pad_pair(image: np.ndarray, label: np.ndarray, size: int, image_value: int = 128):
    """Pad bottom/right to exactly ``size`` x ``size``: image with ``image_value`` (uint8),
    label with ignore. Returns (image, label, pad mask)."""
    h, w = label.shape
    if h > size or w > size:
        raise ValueError(f"a {h}x{w} crop does not fit the {size}x{size} padding; pad_to >= crop")
    out_image = np.full((size, size, 3), image_value, np.uint8)
    out_label = np.full((size, size), IGNORE, np.int64)
    pad = np.ones((size, size), bool)
    out_image[:h, :w], out_label[:h, :w], pad[:h, :w] = image, label, False
    return out_image, out_label, pad


class OfficialAugmentation:
    """Steps 1-5 of the module docstring.

    Args:
        min_sizes: short-side choices (``INPUT.MIN_SIZE_TRAIN``). max_size: long-side limit.
        crop: crop size. single_category_max_area: the crop's area limit (1: none).
        color_aug: apply ``color_aug_ssd``. flip: "horizontal" or "none".
        pad_to: final square size (``INPUT.SIZE_DIVISIBILITY``).
    """

    def __init__(
        self,
        min_sizes,
        max_size: int,
        crop: int,
        single_category_max_area: float = 1.0,
        color_aug: bool = True,
        flip: str = "horizontal",
        pad_to: int | None = None,
        image_pad_value: int = 128,
    ):
        if flip not in ("horizontal", "none"):
            raise ValueError(f"flip must be 'horizontal' or 'none', got {flip!r}")
        self.min_sizes, self.max_size = [int(s) for s in min_sizes], max_size
        self.crop, self.max_area = crop, single_category_max_area
        self.color_aug, self.flip = color_aug, flip
        self.pad_to = crop if pad_to is None else pad_to
        self.image_pad_value = image_pad_value

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        """uint8 (H, W, 3) RGB and int64 (H, W) label -> padded image, label and pad mask."""
        h, w = label.shape
        short = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        image, label = resize_pair(image, label, *shortest_edge_size(h, w, short, self.max_size))
        y0, x0, ch, cw = crop_window(label, self.crop, self.max_area, rng)
        image, label = image[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]
        if self.color_aug:
            image = color_aug_ssd(np.ascontiguousarray(image), rng)
        if self.flip == "horizontal" and rng.uniform() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return pad_pair(image, label, self.pad_to, self.image_pad_value)


class SimpleScaleAugmentation:
    """Our earlier, simpler variant (``--augment simple-scale``): short side scaled to
    ``short_side * U(scale_range)`` with no long-side limit, a random crop, a flip, no colour
    augmentation; padded to ``crop`` with ``image_pad_value`` and ignore."""

    def __init__(self, crop: int, short_side: int, scale_range=(0.5, 2.0), image_pad_value=128):
        self.crop, self.short_side, self.scale_range = crop, short_side, tuple(scale_range)
        self.image_pad_value = image_pad_value

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        h, w = label.shape
        scale = self.short_side * rng.uniform(*self.scale_range) / min(h, w)
        image, label = resize_pair(image, label, max(1, round(h * scale)), max(1, round(w * scale)))
        y0, x0, ch, cw = crop_window(label, self.crop, 1.0, rng)
        image, label = image[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]
        if rng.uniform() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return pad_pair(image, label, self.crop, self.image_pad_value)
