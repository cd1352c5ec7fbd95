"""Prompt templates of the text tower: the official sets and the rule for predefined ones.

A class name goes into each template's ``{}``; the class feature is the normalised mean of the
templates' normalised embeddings (``MaskAdaptedCLIP.text_features``).
"""

from __future__ import annotations

# The 14 ViLD prompt templates used by the official OVSeg evaluation.
VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

# The 80 ImageNet prompt templates of the official OVSeg (``TEXT_TEMPLATES: imagenet``), in
# their order; the same as CLIP's ImageNet zero-shot prompts.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# The authors' SAM demo (facebook/ov-seg space) encodes each class name with this one template.
PHOTO_TEMPLATES = ("a photo of {}",)

TEMPLATE_SETS = ("vild", "imagenet", "predefined", "photo")


def prompt_templates(kind: str, predefined: tuple[str, ...] = ("a photo of a {}.",)) -> tuple:
    """The prompt templates of ``TEXT_TEMPLATES`` ``kind``: "vild" (14), "imagenet" (80) or
    "predefined" (``predefined``, the config's ``PREDEFINED_PROMPT_TEMPLATES``).

    Every template must contain ``{}`` once, where the class name goes.
    """
    if kind == "vild":
        return VILD_TEMPLATES
    if kind == "imagenet":
        return IMAGENET_TEMPLATES
    if kind == "photo":  # the authors' SAM demo space, not an official config value
        return PHOTO_TEMPLATES
    if kind != "predefined":
        raise ValueError(f"text templates {kind!r}: use one of {', '.join(TEMPLATE_SETS)}")
    templates = tuple(predefined)
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(
            f"predefined templates must be a non-empty list of strings with one '{{}}' each, "
            f"got {list(templates)!r}"
        )
    return templates
