"""Nested training state on disk as safetensors + JSON, never pickle.

``save_state(state, dir, name)`` writes ``<name>.safetensors`` with every
tensor and numpy array, and ``<name>.json`` with the structure around them:
optimizer and scheduler state dicts, RNG states, anything made of dict, list,
tuple, tensors, numpy arrays, int, float, bool, None, str and bytes.
``load_state`` gives back the same types and values (tuples stay tuples, int
keys stay ints, numpy arrays keep their dtype).

In the JSON, null / true / false / ints / finite floats / strings / lists
are themselves; every other value is an object with one ``$tag`` key, so a
JSON object is never ambiguous::

    {"$dict": {"lr": 0.1}}            a dict with str keys
    {"$items": [[0, ...], [1, ...]]}  a dict with other keys (optimizer state)
    {"$tuple": [...]}   {"$float": "nan"}   {"$bytes": "<base64>"}
    {"$tensor": "state/0/exp_avg"}    a tensor in the safetensors file
    {"$ndarray": "...", "dtype": "<u4", "shape": [624]}   raw bytes there
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "peft_core.state"
VERSION = 1
# A safetensors header entry that ties the pair of files together.
_TOKEN_KEY = "peft_core_state_token"


# -- atomic files ------------------------------------------------------------------


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new file in ``directory`` survive a power cut (a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)``, fsync, then rename over ``path``: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        write(str(tmp))
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# -- encoding ------------------------------------------------------------------------


class _Encoder:
    """Turns a state into JSON-able structure, collecting tensors under path-like names."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._by_id: dict[int, str] = {}  # the same tensor object twice is stored once
        self._storages: set[tuple[int, int]] = set()

    def encode(self, value: Any, path: str) -> Any:
        kind = type(value)
        if value is None or kind in (bool, str, int):
            return value
        if kind is float:
            return value if math.isfinite(value) else {"$float": repr(value)}
        if kind is list:
            return [self.encode(v, f"{path}/{i}") for i, v in enumerate(value)]
        if kind is tuple:
            return {"$tuple": [self.encode(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if kind is dict or kind is OrderedDict:
            return self._encode_dict(value, path)
        if kind is bytes:
            return {"$bytes": base64.b64encode(value).decode("ascii")}
        if isinstance(value, torch.Tensor):
            return self._encode_tensor(value, path)
        if isinstance(value, np.ndarray):
            return self._encode_ndarray(value, path)
        if isinstance(value, np.generic):
            return {"$np_scalar": {"dtype": _numpy_dtype(value.dtype, path), "hex": value.tobytes().hex()}}
        if isinstance(value, torch.dtype):
            return {"$torch_dtype": str(value).removeprefix("torch.")}
        raise TypeError(
            f"cannot save {kind.__name__} at {_where(path)}: training state may hold dict, list, tuple, "
            "tensors, numpy arrays, int, float, bool, None, str and bytes; convert it to one of those first"
        )

    def _encode_dict(self, value: dict, path: str) -> dict:
        node: dict[str, Any]
        if all(type(k) is str for k in value):
            node = {"$dict": {k: self.encode(v, f"{path}/{k}") for k, v in value.items()}}
        else:
            items = []
            for k, v in value.items():
                if k is not None and type(k) not in (str, int, bool, float, tuple):
                    raise TypeError(f"cannot save dict key {k!r} ({type(k).__name__}) at {_where(path)}")
                items.append([self.encode(k, path), self.encode(v, f"{path}/{k}")])
            node = {"$items": items}
        if isinstance(value, OrderedDict):  # module state dicts are OrderedDicts
            node["ordered"] = True
        return node

    def _name(self, path: str) -> str:
        name = path.lstrip("/") or "state"
        base, n = name, 1
        while name in self.tensors:  # keys like 0 and "0" in one dict give the same path
            name, n = f"{base}#{n}", n + 1
        return name

    def _encode_tensor(self, value: torch.Tensor, path: str) -> dict:
        if value.layout != torch.strided or value.is_quantized:
            raise TypeError(f"cannot save the {value.layout} tensor at {_where(path)}: only dense tensors work")
        node: dict[str, Any] = {}
        if isinstance(value, torch.nn.Parameter):
            node["parameter"] = value.requires_grad
        if id(value) in self._by_id:
            node["$tensor"] = self._by_id[id(value)]
            return node
        name = self._name(path)
        tensor = value.detach().to("cpu")
        # safetensors refuses views and tensors sharing storage; copy those (only those).
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        whole = tensor.is_contiguous() and tensor.storage_offset() == 0 and storage[1] == tensor.nbytes
        if not whole or storage in self._storages or tensor.nbytes == 0:
            tensor = tensor.contiguous().clone()
        else:
            self._storages.add(storage)
        self.tensors[name] = tensor
        self._by_id[id(value)] = name
        node["$tensor"] = name
        return node

    def _encode_ndarray(self, value: np.ndarray, path: str) -> dict:
        dtype = _numpy_dtype(value.dtype, path)
        name = self._name(path)
        raw = np.ascontiguousarray(value).view(np.uint8).reshape(-1) if value.size else np.zeros(0, np.uint8)
        self.tensors[name] = torch.from_numpy(raw.copy())
        return {"$ndarray": name, "dtype": dtype, "shape": list(value.shape)}


def _where(path: str) -> str:
    return path.lstrip("/") or "the top level"


def _numpy_dtype(dtype: np.dtype, path: str) -> str:
    if dtype.hasobject or dtype.fields is not None:
        raise TypeError(f"cannot save the numpy array of dtype {dtype} at {_where(path)}: only numeric dtypes work")
    return dtype.str  # with byte order, e.g. '<u4'


# -- decoding ------------------------------------------------------------------------


class _Decoder:
    def __init__(self, tensors: Callable[[str], torch.Tensor], source: str) -> None:
        self._tensor = tensors
        self._source = source
        self._loaded: dict[str, torch.Tensor] = {}

    def decode(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "$dict" in node or "$items" in node:
            pairs = node["$dict"].items() if "$dict" in node else node["$items"]
            mapping = OrderedDict() if node.get("ordered") else {}
            for k, v in pairs:
                mapping[self.decode(k)] = self.decode(v)
            return mapping
        if "$tuple" in node:
            return tuple(self.decode(v) for v in node["$tuple"])
        if "$float" in node:
            return float(node["$float"])
        if "$bytes" in node:
            return base64.b64decode(node["$bytes"])
        if "$tensor" in node:
            return self._decode_tensor(node)
        if "$ndarray" in node:
            raw = self._tensor(node["$ndarray"]).numpy()
            return raw.view(np.dtype(node["dtype"])).reshape(node["shape"]).copy()
        if "$np_scalar" in node:
            spec = node["$np_scalar"]
            return np.frombuffer(bytes.fromhex(spec["hex"]), dtype=np.dtype(spec["dtype"]))[0]
        if "$torch_dtype" in node:
            return getattr(torch, node["$torch_dtype"])
        raise ValueError(f"{self._source}: unknown entry {sorted(node)}; a newer version of peft_core wrote it")

    def _decode_tensor(self, node: dict) -> torch.Tensor:
        name = node["$tensor"]
        if name not in self._loaded:
            tensor = self._tensor(name)
            if "parameter" in node:
                tensor = torch.nn.Parameter(tensor, requires_grad=node["parameter"])
            self._loaded[name] = tensor
        return self._loaded[name]


# -- public API ------------------------------------------------------------------------


def save_state(state: Any, directory: str | os.PathLike, name: str) -> None:
    """Write ``state`` as ``<directory>/<name>.safetensors`` + ``<name>.json``, each atomically.

    A token in both files ties them together, so a reader never mixes the
    tensors of one save with the structure of another.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder = _Encoder()
    structure = encoder.encode(state, "")
    token = secrets.token_hex(8)
    # The JSON is rendered before anything is written, so a bad value leaves no files behind.
    text = json.dumps({"format": FORMAT, "version": VERSION, "token": token, "state": structure})
    tensors = encoder.tensors
    atomic_write(directory / f"{name}.safetensors", lambda tmp: save_file(tensors, tmp, metadata={_TOKEN_KEY: token}))
    atomic_write_text(directory / f"{name}.json", text)


def load_state(directory: str | os.PathLike, name: str, map_location: str | torch.device = "cpu") -> Any:
    """Read what ``save_state`` wrote; tensors go to ``map_location``."""
    directory = Path(directory)
    json_path, tensor_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise FileNotFoundError(f"no saved state {name!r} in {directory}: {path.name} is missing")
    document = json.loads(json_path.read_text(encoding="utf-8"))
    if document.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not a peft_core state file (format {document.get('format')!r})")
    if document.get("version", 0) > VERSION:
        raise ValueError(f"{json_path} has version {document['version']}; this peft_core reads up to {VERSION}")
    device = str(map_location)
    with safe_open(str(tensor_path), framework="pt", device=device) as handle:
        token = (handle.metadata() or {}).get(_TOKEN_KEY)
        if token != document.get("token"):
            raise ValueError(
                f"{tensor_path.name} and {json_path.name} in {directory} come from different saves "
                "(a save was interrupted between them); use an older checkpoint"
            )
        return _Decoder(handle.get_tensor, str(json_path)).decode(document["state"])
