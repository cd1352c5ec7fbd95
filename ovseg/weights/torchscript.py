"""Reading the tensors of a TorchScript archive (OpenAI's CLIP ``.pt``) without running it.

``torch.jit.load`` rebuilds the scripted module, which runs code from the file (a class's
``__setstate__`` is TorchScript that executes while the file loads). This reader executes
nothing. A TorchScript archive is a zip:

- ``<name>/data.pkl``: the module tree, pickled. Each module is an object of a class named
  ``__torch__.<path>.<Class>`` whose state is a dict of attributes (submodules, tensors,
  flags); each tensor is ``torch._utils._rebuild_tensor_v2`` of a storage given as a
  persistent id ``("storage", <torch.XStorage>, key, location, numel)``;
- ``<name>/data/<key>``: the raw bytes of each storage (little-endian);
- ``<name>/code/**/*.py``: the TorchScript source of each class, which lists its
  ``__parameters__`` and ``__buffers__`` (read here as text, never run).

``data.pkl`` is unpickled by ``_ArchiveUnpickler``, which resolves only the names above (any
other global is refused), turns every ``__torch__`` object into an inert record of its class
name and state (its ``__setstate__`` is never looked up), and builds each tensor itself
from the storage bytes, with its view checked against the storage's size. The state dict is
then the parameters and buffers of each module, named by attribute path, as
``ScriptModule.state_dict()`` names them.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    """Stands for ``torch.XStorage`` in a persistent id: only its dtype is used."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class ScriptObject:
    """An object of a TorchScript class, inert: its class name and pickled state."""

    def __init__(self, qualname: str):
        self.qualname = qualname
        self.state = None

    def __setstate__(self, state) -> None:  # BUILD stores the state; no code of the file runs
        self.state = state


def _script_class(qualname: str) -> type:
    def new(cls, *args):
        return ScriptObject(qualname)

    return type("ScriptClass", (), {"__new__": new})


def _list(values, *rest):
    return list(values)


def _same(value, *rest):
    return value


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` with the names a TorchScript module tree uses, nothing else."""

    def __init__(self, data: bytes, read_record):
        import io

        super().__init__(io.BytesIO(data))
        self._read_record = read_record
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
            return _list
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return _same
        raise pickle.UnpicklingError(
            f"refused {module}.{name}: a TorchScript archive's data.pkl holds modules and "
            "tensors only, and this reader builds nothing else"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unexpected storage record {pid!r}")
        key = str(key)
        if key not in self._storages:
            data = self._read_record(key)
            item = torch.empty((), dtype=kind.dtype).element_size()
            if len(data) != numel * item:
                raise pickle.UnpicklingError(
                    f"storage {key}: {len(data)} bytes, but {numel} x {item}-byte elements "
                    "were announced"
                )
            flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else None
            self._storages[key] = (
                flat.view(kind.dtype) if flat is not None else torch.empty(0, dtype=kind.dtype)
            )
        return self._storages[key]

    @staticmethod
    def _rebuild_tensor(storage, offset, size, stride, *rest) -> torch.Tensor:
        if not isinstance(storage, torch.Tensor):
            raise pickle.UnpicklingError("a tensor must be built on a storage record")
        size, stride = tuple(size), tuple(stride)
        ok = (
            isinstance(offset, int)
            and offset >= 0
            and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in size + stride)
        )
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if not ok or (all(size) and last >= storage.numel()):
            raise pickle.UnpicklingError(
                f"tensor view (offset {offset}, size {size}, stride {stride}) outside its "
                f"storage of {storage.numel()} elements"
            )
        return storage.as_strided(size, stride, offset)


_CLASS = re.compile(r"^class (\w+)\(", re.M)
_LIST = re.compile(r"^\s+__(parameters|buffers)__ = \[([^\]]*)\]", re.M)


def _state_names(archive: zipfile.ZipFile, root: str) -> dict[str, set[str]]:
    """``{"__torch__.x.Class": {parameter and buffer names}}`` from the archive's code files
    (read as text)."""
    out: dict[str, set[str]] = {}
    prefix = f"{root}code/"
    for name in archive.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name[len(prefix) : -len(".py")].replace("/", ".")
        text = archive.read(name).decode("utf-8", errors="replace")
        starts = [(m.start(), m.group(1)) for m in _CLASS.finditer(text)]
        for i, (start, cls) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            names: set[str] = set()
            for _, items in _LIST.findall(text[start:end]):
                names.update(re.findall(r'"([^"]+)"', items))
            out[f"{module}.{cls}"] = names
    return out


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a zip holding ``<name>/data.pkl`` and ``<name>/code/`` (``torch.jit.save``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names)


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, by attribute path (the keys of
    ``torch.jit.load(path).state_dict()``), without running anything from the file.

    Objects whose state is not an attribute dict (a class with its own ``__getstate__``)
    contribute no tensors.

    Raises:
        ValueError: not a TorchScript archive, or a ``data.pkl`` that asks for anything but
            modules and tensors.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path}: not a TorchScript archive ({error})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a TorchScript archive (no <name>/data.pkl)")
        root = pickles[0][: -len("data.pkl")]

        def read_record(key: str) -> bytes:
            try:
                return archive.read(f"{root}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage record data/{key} is missing") from None

        try:
            tree = _ArchiveUnpickler(archive.read(pickles[0]), read_record).load()
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"{path}: refused or unreadable TorchScript data.pkl: {error}"
            ) from None
        names = _state_names(archive, root)
    out: dict[str, torch.Tensor] = {}
    _collect(tree, "", names, out, depth=0)
    return out


def _collect(obj, prefix: str, names: dict[str, set[str]], out: dict, depth: int) -> None:
    if depth > 200:
        raise ValueError("TorchScript module tree nested deeper than 200 levels")
    if not isinstance(obj, ScriptObject) or not isinstance(obj.state, dict):
        return
    declared = names.get(obj.qualname)
    for key, value in obj.state.items():
        if isinstance(value, torch.Tensor):
            if declared is None or key in declared:
                out[prefix + str(key)] = value
        elif isinstance(value, ScriptObject):
            _collect(value, f"{prefix}{key}.", names, out, depth + 1)
