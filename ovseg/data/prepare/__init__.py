"""Turn the benchmarks' original downloads into the layouts the readers expect."""

from ovseg.data.prepare.ade20k_full import prepare_ade20k_full
from ovseg.data.prepare.coco_stuff import prepare_coco_stuff
from ovseg.data.prepare.pascal_context import prepare_pascal_context
from ovseg.data.prepare.pascal_voc import prepare_pascal_voc

__all__ = [
    "prepare_ade20k_full",
    "prepare_coco_stuff",
    "prepare_pascal_context",
    "prepare_pascal_voc",
]
