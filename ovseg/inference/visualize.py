"""Drawing label maps: a deterministic palette, colour overlays and a legend.

Pure NumPy + Pillow; used by ``Segmentation.overlay`` and by the web demo.
"""

from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_GOLDEN = 0.6180339887498949
# Unlabelled pixels (negative labels): black in a colour map, the image itself in an overlay.
UNLABELLED_RGB = (0, 0, 0)
UNLABELLED_SWATCH = (255, 255, 255)


@lru_cache(maxsize=8)
def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 RGB colours, the same for a given class index in every run.

    Hues step by the golden ratio so neighbouring indices differ strongly; saturation and
    value cycle so that long vocabularies stay distinguishable. The first 1024 colours are
    pairwise distinct, which lets a viewer map a colour back to its class.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    seen: set[tuple[int, int, int]] = set()
    for k in range(num_classes):
        hue = (0.08 + k * _GOLDEN) % 1.0
        sat = (0.85, 0.6, 0.95, 0.7)[(k // 7) % 4]
        val = (0.95, 0.75, 0.85, 0.65)[(k // 3) % 4]
        rgb = tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, sat, val))
        while rgb in seen:  # rare rounding collision: nudge the blue channel
            rgb = (rgb[0], rgb[1], (rgb[2] + 1) % 256)
        seen.add(rgb)
        colours[k] = rgb
    return colours


def colorize(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """Colour image (H, W, 3) uint8 of a (H, W) integer label map with ``palette``; negative
    labels (unlabelled) are ``UNLABELLED_RGB``."""
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got shape {tuple(label_map.shape)}")
    colours = palette(max(num_classes, 1))[np.maximum(label_map, 0)]
    colours[label_map < 0] = UNLABELLED_RGB
    return colours


def blend(image: np.ndarray, label_map: np.ndarray, num_classes: int, alpha: float) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colours``, (H, W, 3) uint8; image is (H, W, 3) uint8 RGB.

    Unlabelled pixels (negative labels) keep the image unchanged."""
    if image.shape[:2] != label_map.shape:
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]} but the label map is "
            f"{label_map.shape[1]}x{label_map.shape[0]} (width x height); they must match"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(label_map, num_classes).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    unlabelled = label_map < 0
    out[unlabelled] = image[unlabelled]
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def draw_legend(
    image: Image.Image, entries: list[tuple[str, tuple[int, int, int], float]]
) -> Image.Image:
    """``image`` with a legend panel to its right: one row per (name, rgb, fraction) entry.

    The fraction (share of pixels, 0..1) is printed after the name as a percentage.
    """
    height = image.height
    font_size = int(np.clip(height / 40, 11, 22))
    font = _font(font_size)
    row = font_size + 8
    pad = 8
    labels = [f"{name}  {100 * frac:.1f}%" for name, _, frac in entries]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((measure.textlength(t, font=font) for t in labels), default=0)
    panel_w = int(pad * 3 + font_size + text_w)
    rows_per_col = max(1, (height - 2 * pad) // row)
    n_cols = max(1, -(-len(entries) // rows_per_col))
    canvas = Image.new("RGB", (image.width + panel_w * n_cols, height), (255, 255, 255))
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, ((_, rgb, _), text) in enumerate(zip(entries, labels)):
        col, r = divmod(i, rows_per_col)
        x = image.width + col * panel_w + pad
        y = pad + r * row
        draw.rectangle([x, y, x + font_size, y + font_size], fill=tuple(rgb), outline=(0, 0, 0))
        draw.text((x + font_size + pad, y), text, fill=(0, 0, 0), font=font)
    return canvas


def draw_legend_inset(
    image: Image.Image, entries: list[tuple[str, tuple[int, int, int], float]]
) -> Image.Image:
    """``image`` (same size) with the legend drawn inside its top-left corner on a
    translucent white box: the form for video frames, whose size must stay the source's.
    Rows that do not fit the height are left out (the largest classes come first)."""
    font_size = int(np.clip(min(image.size) / 18, 8, 18))
    font = _font(font_size)
    row = font_size + 4
    pad = 4
    rows = max(1, min(len(entries), (image.height - 2 * pad) // row))
    labels = [f"{name}  {100 * frac:.1f}%" for name, _, frac in entries[:rows]]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((measure.textlength(t, font=font) for t in labels), default=0)
    box = (0, 0, int(3 * pad + font_size + text_w), pad * 2 + rows * row - 4)
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle(box, fill=(255, 255, 255, 170))
    for i, ((_, rgb, _), text) in enumerate(zip(entries, labels)):
        y = pad + i * row
        draw.rectangle([pad, y, pad + font_size, y + font_size], fill=(*rgb, 255))
        draw.text((2 * pad + font_size, y), text, fill=(0, 0, 0, 255), font=font)
    return Image.alpha_composite(base, layer).convert("RGB")


def overlay_image(
    image: np.ndarray | None,
    label_map: np.ndarray,
    class_names: list[str],
    alpha: float = 0.5,
    legend: bool | str = True,
) -> Image.Image:
    """Coloured overlay of ``label_map`` on ``image`` with a legend of the classes present.

    Args:
        image: (H, W, 3) uint8 RGB, or None to draw the colour map alone.
        label_map: (H, W) integer index into ``class_names``; negative = unlabelled (left
            uncoloured, listed as "unlabelled" in the legend).
        class_names: the vocabulary.
        alpha: colour weight in [0, 1].
        legend: add the legend panel (classes present, largest first) to the right; "inset"
            draws it inside the image instead (the size stays (H, W)); False: none.
    Returns:
        RGB PIL image, (H, W) plus the legend panel's width.
    """
    k = len(class_names)
    if image is None:
        pixels = colorize(label_map, k)
    else:
        pixels = blend(np.asarray(image, dtype=np.uint8), label_map, k, alpha)
    out = Image.fromarray(pixels)
    if not legend:
        return out
    if legend == "inset":
        return draw_legend_inset(out, legend_entries(label_map, class_names))
    return draw_legend(out, legend_entries(label_map, class_names))


def legend_entries(
    label_map: np.ndarray, class_names: list[str]
) -> list[tuple[str, tuple[int, int, int], float]]:
    """(name, rgb, share of pixels) per class present, largest first; then ("unlabelled",
    ``UNLABELLED_SWATCH``, share) when some labels are negative."""
    k = len(class_names)
    labels = label_map.ravel()
    counts = np.bincount(labels[labels >= 0], minlength=k)
    colours = palette(max(k, 1))
    present = [c for c in np.argsort(-counts, kind="stable").tolist() if counts[c] > 0]
    total = max(int(label_map.size), 1)
    entries = [(class_names[c], tuple(colours[c].tolist()), counts[c] / total) for c in present]
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        entries.append(("unlabelled", UNLABELLED_SWATCH, unlabelled / total))
    return entries
