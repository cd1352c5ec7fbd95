"""The released files ovseg can download: names, sources, checksums and licences.

``REGISTRY`` maps each download name (``ovseg download --list``) to a ``ReleasedFile``: its
file name, the sources tried in order (``HubFile`` on the Hugging Face Hub, or a URL), the
pinned sha256 (or the published md5 prefix) and its licence. ``ovseg.weights.hub`` finds,
checks and downloads them.

Licences. The released OVSeg weights are CC BY-NC 4.0 (non-commercial use only), whereas this
code is MIT; each entry names its licence, and ``ovseg download --list`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

CODE_LICENSE = "MIT"
OVSEG_WEIGHTS_LICENSE = "CC BY-NC 4.0"  # the ov-seg repository's LICENSE (non-commercial)
LICENSE_URLS = {
    "CC BY-NC 4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
    "MIT": "https://opensource.org/licenses/MIT",
    "Apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
}


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face Hub repository (``repo_type``: model, space or dataset)."""

    repo_id: str
    filename: str
    repo_type: str = "model"
    revision: str = "main"

    def __str__(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"hf://{prefix}{self.repo_id}/{self.filename}@{self.revision}"


@dataclass(frozen=True)
class ReleasedFile:
    """One downloadable file.

    Attributes:
        filename: its name (in the Hub repositories, and in ``ovseg_home()`` for URLs).
        sources: where to get it, tried in order: ``HubFile`` (huggingface_hub) or a URL (gdown).
        sha256: full hex digest from a verifiable source, or None (then the md5 prefix is
            checked and the sha256 of the first download is recorded and enforced).
        md5_prefix: leading hex digits of the md5 where that is what is published.
        description: one line for ``ovseg download --list``.
        license: licence of the weights (``LICENSE_URLS`` keys).
    """

    filename: str
    sources: tuple[HubFile | str, ...]
    sha256: str | None
    md5_prefix: str | None
    description: str
    license: str


def _gdrive(file_id: str) -> str:
    return f"https://drive.google.com/uc?id={file_id}"


# The authors' demo space facebook/ov-seg stores the Swin-B checkpoint, the standalone
# mask-adapted CLIP of its SAM mode and the two SAM checkpoints it uses; camenduru/ovseg mirrors
# the first two. The sha256 values are the Hub's LFS metadata of those files.
_SPACE = "facebook/ov-seg"
_MIRROR = "camenduru/ovseg"
_OPENAI = "https://openaipublic.azureedge.net/clip/models/"
_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"


def _sam_file(kind: str, md5_prefix: str, sha256: str) -> ReleasedFile:
    """A SAM checkpoint: in the authors' space, and at Meta's URL."""
    filename = f"sam_{kind}_{md5_prefix}.pth"
    return ReleasedFile(
        filename=filename,
        sources=(HubFile(_SPACE, filename, "space"), _SAM + filename),
        sha256=sha256,
        md5_prefix=md5_prefix,
        description=f"Segment Anything ViT-{kind[-1].upper()} (for --proposals sam)",
        license="Apache-2.0",
    )


REGISTRY: dict[str, ReleasedFile] = {
    "ovseg-swinB-vitL14": ReleasedFile(
        filename="ovseg_swinbase_vitL14_ft_mpt.pth",
        sources=(
            HubFile(_SPACE, "ovseg_swinbase_vitL14_ft_mpt.pth", "space"),
            HubFile(_MIRROR, "ovseg_swinbase_vitL14_ft_mpt.pth"),
            _gdrive("1cn-ohxgXDrDfkzC1QdO-fi8IjbjXmgKy"),
        ),
        sha256="dd3731dde48d96654aba63e5a93753dc837d6889162a18ddf0877f5463d94c90",
        md5_prefix="526080",
        description="official OVSeg Swin-B + CLIP ViT-L/14, fine-tuned + mask prompts",
        license=OVSEG_WEIGHTS_LICENSE,
    ),
    "ovseg-R101c-vitB16": ReleasedFile(
        filename="ovseg_R101c_vitB16_ft_mpt.pth",
        sources=(_gdrive("1ZmeFMEkhuLqaWkhz4t4IlQ8YflrYja8q"),),
        sha256=None,
        md5_prefix="c746f4",
        description="official OVSeg R101c + CLIP ViT-B/16, fine-tuned + mask prompts",
        license=OVSEG_WEIGHTS_LICENSE,
    ),
    "ovseg-swinB-vitL14-mpt-only": ReleasedFile(
        filename="ovseg_swinbase_vitL14_mpt_only.pt",
        sources=(_gdrive("1LJGWFjHw76OGDNy9r9KQIaACfIm9KMhQ"),),
        sha256=None,
        md5_prefix="2dd495",
        description="official OVSeg Swin-B + CLIP ViT-L/14, mask prompts only (CLIP frozen)",
        license=OVSEG_WEIGHTS_LICENSE,
    ),
    "ovseg-clip-vitL14": ReleasedFile(
        filename="ovseg_clip_l_9a1909.pth",
        sources=(
            HubFile(_SPACE, "ovseg_clip_l_9a1909.pth", "space"),
            HubFile(_MIRROR, "ovseg_clip_l_9a1909.pth"),
        ),
        sha256="eb5cbc83b922e18241654a19ad4cb836cf4f00169cd5684a4932d8a6f825dd36",
        md5_prefix=None,
        description="mask-adapted CLIP ViT-L/14 alone (the authors' SAM demo; --clip)",
        license=OVSEG_WEIGHTS_LICENSE,
    ),
    # SAM: sha256 from the Hub's LFS pointers of these files (e.g. huggingface.co
    # andzhang01/segment_anything commits d579a94 and 9946685: "oid sha256:a7bf3b02...",
    # size 2564550879; "oid sha256:3adcc431...", size 1249524607); the name's suffix is the
    # md5's first six hex digits (full md5 4b8939a88964f0f4ff5f5b2642c598a6 and
    # 0b3195507c641ddb6910d2bb5adee89c, as checked by several downloaders).
    "sam-vit-h": _sam_file(
        "vit_h", "4b8939", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"
    ),
    "sam-vit-l": _sam_file(
        "vit_l", "0b3195", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"
    ),
    "clip-vitL14": ReleasedFile(
        filename="ViT-L-14.pt",
        sources=(
            _OPENAI
            + "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        ),
        sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        md5_prefix=None,
        description="OpenAI CLIP ViT-L/14 (224 px)",
        license="MIT",
    ),
    "clip-vitB16": ReleasedFile(
        filename="ViT-B-16.pt",
        sources=(
            _OPENAI
            + "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        ),
        sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        md5_prefix=None,
        description="OpenAI CLIP ViT-B/16 (224 px)",
        license="MIT",
    ),
}

# model variant -> download name of its released checkpoint
RELEASED_FILES: dict[str, str] = {
    name: REGISTRY[name].filename for name in ("ovseg-swinB-vitL14", "ovseg-R101c-vitB16")
}
