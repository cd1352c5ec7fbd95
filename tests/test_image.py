"""Untrusted image files: modes, EXIF orientation, truncated and bogus files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ovseg.data.image import read_image


def test_modes_become_rgb(tmp_path):
    gray16 = Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    gray16.save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert (
        out.shape == (3, 4, 3) and out.dtype == np.uint8 and out[2, 3, 0] == 214
    )  # 55000 / 65535 * 255
    Image.new("P", (4, 3)).save(tmp_path / "p.png")
    Image.new("CMYK", (4, 3), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    Image.new("LA", (4, 3)).save(tmp_path / "la.png")
    for name in ("p.png", "c.jpg", "la.png"):
        assert read_image(tmp_path / name).shape == (3, 4, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (40, 20, 3)


def test_truncated_and_bogus_files(tmp_path):
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
