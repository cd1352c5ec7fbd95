"""Released weights: names, URLs, checksums and the local cache folder.

Downloading itself (``download``) is added with the ``ovseg download`` command; the model
builders only need ``find_cached`` to locate weights already on disk.
"""

from __future__ import annotations

import os
from pathlib import Path


def ovseg_home() -> Path:
    """The cache folder: ``$OVSEG_HOME``, else the platform's user cache dir + ``/ovseg``."""
    env = os.environ.get("OVSEG_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ovseg"))


# model variant -> file name of its released checkpoint inside ovseg_home()
RELEASED_FILES: dict[str, str] = {
    "ovseg-swinB-vitL14": "ovseg_swinbase_vitL14_ft_mpt.pth",
    "ovseg-R101c-vitB16": "ovseg_R101c_vitB16_ft_mpt.pth",
}


def find_cached(name: str) -> Path | None:
    """Path of the cached released checkpoint for variant ``name``, or None if absent."""
    filename = RELEASED_FILES.get(name)
    if filename is None:
        return None
    path = ovseg_home() / filename
    return path if path.is_file() else None
