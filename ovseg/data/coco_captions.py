"""COCO-format caption files (and instance files) indexed by image, for pair mining."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path


class CocoCaptions:
    """COCO caption JSON (and, for the GT modes, instance JSON) indexed by image.

    Images are those of the caption file, in increasing id order. Captions of an image are in
    increasing caption-id order.
    """

    def __init__(self, captions_json: str | Path, instances_json: str | Path | None = None):
        data = json.loads(Path(captions_json).read_text())
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(
                f"{captions_json}: not a COCO caption file (need 'images' and 'annotations')"
            )
        self.images = {img["id"]: img for img in data["images"]}
        self.image_ids = sorted(self.images)
        self._captions: dict[int, list[tuple[int, str]]] = {}
        bad = [a for a in data["annotations"] if not {"id", "image_id", "caption"} <= set(a)]
        if bad:
            raise ValueError(
                f"{captions_json}: {len(bad)} annotations lack 'id', 'image_id' or 'caption' "
                f"(keys of the first: {sorted(bad[0])}); is this an instance file?"
            )
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            self._captions.setdefault(ann["image_id"], []).append((ann["id"], ann["caption"]))
        self.coco = None
        if instances_json is not None:
            from pycocotools.coco import COCO

            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(instances_json))

    def captions(self, image_id: int) -> list[tuple[int, str]]:
        return self._captions.get(image_id, [])

    def instances(self, image_id: int) -> list[dict]:
        if self.coco is None:
            raise ValueError("the GT modes need the instance annotations (--instances JSON)")
        return sorted(self.coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])

    def category_name(self, category_id: int) -> str:
        return self.coco.cats[category_id]["name"]

    def digest(self) -> str:
        """sha1 of the ordered image ids and file names: identifies the image list."""
        h = hashlib.sha1()
        for image_id in self.image_ids:
            h.update(f"{image_id}:{self.images[image_id]['file_name']}\n".encode())
        return h.hexdigest()
