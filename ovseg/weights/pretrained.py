"""Our own checkpoints in the Hugging Face Hub's conventions.

A model folder (or Hub repository) holds ``config.json`` (``OVSegConfig.to_dict()``),
``model.safetensors`` (the state dict, written by ``ovseg.save_checkpoint``, so it also loads
alone with ``ovseg.load_checkpoint``) and ``README.md``, a model card with YAML front matter:
the variant, where the weights come from and how they were trained, the licence of the weights
and the evaluation results recorded for them. ``OVSeg.save_pretrained`` /
``OVSeg.from_pretrained`` / ``OVSeg.push_to_hub`` (``huggingface_hub.PyTorchModelHubMixin``)
call the functions here. A model is named on the command line as ``hf://owner/repo[@revision]``
or by its folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from ovseg.modeling.ovseg import HubFormat, OVSeg
from ovseg.weights.checkpoints import load_checkpoint, save_checkpoint
from ovseg.weights.verify import verify_hub_blob

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HF_SCHEME = "hf://"
# Hub licence identifiers (model card front matter) of the licences ovseg knows
HUB_LICENSE_IDS = {"CC BY-NC 4.0": "cc-by-nc-4.0", "MIT": "mit", "Apache-2.0": "apache-2.0"}


def parse_hf_ref(ref: str) -> tuple[str, str | None] | None:
    """``"hf://owner/repo@rev"`` -> ``("owner/repo", "rev")``; None when ``ref`` is not hf://."""
    if not ref.startswith(HF_SCHEME):
        return None
    body = ref[len(HF_SCHEME) :]
    repo_id, _, revision = body.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (_ and not revision):
        raise ValueError(
            f"expected hf://OWNER/REPO or hf://OWNER/REPO@REVISION (a branch, tag or commit), "
            f"got {ref!r}"
        )
    return repo_id, revision or None


def load_from_hub(repo_id: str, revision: str | None = None):
    """``hf://OWNER/REPO[@REVISION]``: the model from the Hub (or the Hugging Face cache),
    never from a local folder that happens to be called ``OWNER/REPO`` (which
    ``OVSeg.from_pretrained`` would prefer). ``revision`` (branch, tag or commit; default
    main) is asked for both files, and each file is checked against the ETag it was served
    with (``ovseg.weights.verify.verify_hub_blob``)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        config_path = hf_hub_download(repo_id, CONFIG_NAME, revision=revision)
    except (EntryNotFoundError, RepositoryNotFoundError) as error:
        raise ValueError(
            f"hf://{repo_id}{'@' + revision if revision else ''}: no {CONFIG_NAME} on the Hub "
            f"(missing or private repository, unknown revision, or not an ovseg model): "
            f"{str(error).splitlines()[0]}"
        ) from None
    verify_hub_blob(config_path, f"{repo_id}/{CONFIG_NAME}")
    config = json.loads(Path(config_path).read_text())
    return load_pretrained(repo_id, config=config, revision=revision, hub_only=True)


def is_pretrained_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder written by ``save_pretrained``."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def save_pretrained_files(model, folder: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` (config and provenance in its metadata)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, folder / WEIGHTS_NAME)  # provenance goes into its metadata
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")


def load_pretrained(
    model_id: str,
    *,
    config: dict | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
    map_location: str = "cpu",
    hub_only: bool = False,
    **config_fields,
):
    """Build an ``OVSeg`` from a ``save_pretrained`` folder or Hub repository, exactly.

    ``config`` is the parsed ``config.json`` (the mixin reads it first); ``config_fields`` are
    the copies of its keys that the mixin also passes under the constructor's argument names
    (``backbone``). The architecture comes from ``config`` alone; the weights must fit it key
    for key and shape for shape. ``hub_only``: read ``model_id`` from the Hub even when a
    folder of that name exists (``load_from_hub``). Weights from the Hub are checked against
    their ETag (``verify_hub_blob``).
    """
    unknown = sorted(set(config_fields) - set(config or {}))
    if unknown:
        raise TypeError(f"OVSeg.from_pretrained got unexpected arguments {unknown}")
    if config is None:
        folder = Path(model_id).is_dir() and not hub_only
        where = "folder" if folder else "Hub repository (missing, private "
        where += "" if folder else "without a token, or not an ovseg model?)"
        raise ValueError(
            f"{model_id}: no {CONFIG_NAME} in this {where}; an ovseg model holds {CONFIG_NAME}, "
            f"{WEIGHTS_NAME} and README.md (written by model.save_pretrained)"
        )
    if Path(model_id).is_dir() and not hub_only:
        weights = Path(model_id) / WEIGHTS_NAME
    else:
        from huggingface_hub import hf_hub_download

        weights = hf_hub_download(
            model_id,
            WEIGHTS_NAME,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        verify_hub_blob(weights, f"{model_id}/{WEIGHTS_NAME}")
    try:
        model = load_checkpoint(weights, config=config)
    except ValueError as error:
        raise ValueError(f"{model_id}: {error}") from None
    return model.to(map_location).eval()


def describe_variant(config) -> str:
    """One line naming the architecture of a config."""
    clip = config.clip
    tower = f"CLIP ViT (width {clip.vision_width}, {clip.vision_layers} layers, patch "
    tower += f"{clip.patch_size}, {clip.image_size} px, embed {clip.embed_dim})"
    prompts = f", mask prompts depth {config.prompt_depth}" if config.prompt_depth else ""
    if config.backbone is None:
        return (
            f"CLIP branch only (proposals from an external generator such as SAM): {tower}{prompts}"
        )
    backbone = dict(config.backbone)
    kind = backbone.pop("type")
    if kind == "swin":
        name = f"Swin (embed {backbone.get('embed_dim')}, depths {backbone.get('depths')})"
    else:
        name = f"ResNet-{backbone.get('depth')} (deeplab stem)"
    return f"{name} + MaskFormer head ({config.num_queries} queries) + {tower}{prompts}"


def model_card(
    model,
    *,
    repo_id: str | None = None,
    variant: str | None = None,
    provenance: str | None = None,
    recipe: str | None = None,
    license: str | None = None,
    eval_results: dict[str, float] | None = None,
):
    """The model card (``huggingface_hub.ModelCard``) for ``model``.

    Each argument defaults to ``model.provenance`` (keys of the same names), then to what the
    config tells. ``license``: ``"CC BY-NC 4.0"``, ``"MIT"``, ``"Apache-2.0"`` or a Hub licence
    id; unknown leaves ``other`` and says so. ``eval_results``: ``{"ADE20K-150 mIoU": 29.6}``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    info = dict(model.provenance or {})
    variant = variant or info.get("variant") or describe_variant(model.config)
    provenance = provenance or info.get("provenance") or "not recorded"
    recipe = recipe or info.get("recipe") or "not recorded"
    license = license or info.get("license")
    eval_results = eval_results if eval_results is not None else info.get("eval_results") or {}
    hub_license = HUB_LICENSE_IDS.get(license, license) if license else "other"
    data = ModelCardData(
        library_name="ovseg",
        license=hub_license,
        pipeline_tag="image-segmentation",
        tags=["ovseg", "open-vocabulary-segmentation", "semantic-segmentation", "pytorch"],
    )
    name = repo_id or "OVSeg model"
    licence_text = (
        f"The weights are licensed {license}."
        if license
        else "The licence of these weights was not recorded: state it before sharing them."
    )
    if license in ("CC BY-NC 4.0", "cc-by-nc-4.0"):
        licence_text += (
            " They derive from the released OVSeg weights: non-commercial use only "
            "(https://creativecommons.org/licenses/by-nc/4.0/)."
        )
    rows = "\n".join(f"| {k} | {v} |" for k, v in eval_results.items())
    results = (
        f"| benchmark | value |\n|---|---|\n{rows}"
        if eval_results
        else "No evaluation results were recorded for these weights."
    )
    load = f'"{repo_id}"' if repo_id else '"OWNER/REPO"'
    content = f"""---
{data.to_yaml()}
---

# {name}

Open-vocabulary semantic segmentation with mask-adapted CLIP
([OVSeg](https://arxiv.org/abs/2210.04150)), for the `ovseg` library.

## Model

- Variant: {variant}
- Weights: `{WEIGHTS_NAME}`; architecture: `{CONFIG_NAME}` (`ovseg.OVSegConfig`).

## Provenance and training recipe

- Source: {provenance}
- Recipe: {recipe}

## Licence

{licence_text} The ovseg code is MIT.

## Evaluation

{results}

## Use

```python
import ovseg

model = ovseg.OVSeg.from_pretrained({load})  # a Hub repository or a local folder
predictor = ovseg.Predictor(model)
predictor.set_image("photo.jpg")
segmentation = predictor.predict(["sky", "building", "tree"])
```

Command line: `ovseg segment photo.jpg --classes "sky, tree" --model hf://{repo_id or "OWNER/REPO"}`.
"""
    return ModelCard(content)


# OVSeg.save_pretrained / from_pretrained / push_to_hub use these formats.
OVSeg.hub_format = HubFormat(save=save_pretrained_files, load=load_pretrained, card=model_card)
