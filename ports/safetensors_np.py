"""Reading a Hugging Face safetensors checkpoint (single file or sharded) as numpy, without torch.

numpy has no bfloat16, so tensors are viewed through ``ml_dtypes``; files are memory-mapped and a
tensor is only read when asked for.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import ml_dtypes
import numpy as np

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray]) -> None:
    """Writes ``tensors`` as one safetensors file (what transformers' ``from_pretrained`` reads)."""
    names = {np.dtype(v): k for k, v in _DTYPES.items()}
    header, offset = {}, 0
    for key in sorted(tensors):
        t = tensors[key]
        if t.dtype not in names:
            raise ValueError(f"tensor {key!r} has dtype {t.dtype}, which safetensors cannot store")
        header[key] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for key in sorted(tensors):
            f.write(np.ascontiguousarray(tensors[key]).tobytes())


class CheckpointFileError(ValueError):
    """A checkpoint file is missing, truncated or malformed."""


class SafetensorsFile:
    """One ``.safetensors`` file: header parsed and checked against the file size at open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointFileError(f"{self.path}: {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise CheckpointFileError(f"{self.path} is truncated: header needs {8 + n} bytes, file has {size}")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointFileError(f"{self.path}: unreadable safetensors header ({e})") from None
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries = header
        need = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self.data_start + need > size:
            raise CheckpointFileError(
                f"{self.path} is truncated: its tensors need {self.data_start + need} bytes, file has {size}")
        unknown = sorted({e["dtype"] for e in header.values()} - set(_DTYPES))
        if unknown:
            raise CheckpointFileError(f"{self.path}: unsupported dtypes {unknown} (supported: {sorted(_DTYPES)})")

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def read(self, key: str) -> np.ndarray:
        e = self.entries[key]
        begin, end = e["data_offsets"]
        dtype = np.dtype(_DTYPES[e["dtype"]])
        count = int(np.prod(e["shape"], dtype=np.int64))
        if count * dtype.itemsize != end - begin:
            raise CheckpointFileError(f"{self.path}: tensor {key!r} has {end - begin} bytes, its shape "
                                      f"{e['shape']} and dtype {e['dtype']} need {count * dtype.itemsize}")
        data = np.memmap(self.path, dtype=dtype, mode="r", offset=self.data_start + begin, shape=(count,))
        return np.asarray(data).reshape(e["shape"])


class SafetensorsCheckpoint:
    """All tensors of a checkpoint directory, by key: ``model.safetensors`` or an index plus shards.

    ``subfolders`` name sub-checkpoints inside the directory (each its own single file or shards, e.g.
    Kimi-Audio's ``whisper-large-v3/``); their keys are prefixed ``<folder>/`` so that one rule table
    addresses the whole directory.
    """

    def __init__(self, directory: str | Path, subfolders: Sequence[str] = ()):
        self.source = Path(directory)
        self._where = {k: (f, k) for k, f in _files_by_key(self.source).items()}
        for folder in subfolders:
            self._where.update({f"{folder}/{k}": (f, k) for k, f in _files_by_key(self.source / folder).items()})

    def keys(self) -> list[str]:
        return sorted(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        f, k = self._where[key]
        return f.shape(k)

    def read(self, key: str) -> np.ndarray:
        f, k = self._where[key]
        return f.read(k)


def _files_by_key(directory: Path) -> dict[str, SafetensorsFile]:
    """{key: the file holding it} for one directory's ``model.safetensors`` or index plus shards."""
    index = directory / INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).exists()]
        if missing:
            counts = {s: sum(v == s for v in weight_map.values()) for s in missing}
            raise CheckpointFileError(
                f"{index} names shards that are not in {directory}: "
                + ", ".join(f"{s} ({counts[s]} tensors)" for s in missing))
        files = {s: SafetensorsFile(directory / s) for s in shards}
        absent = sorted(k for k, s in weight_map.items() if k not in files[s].entries)
        if absent:
            raise CheckpointFileError(f"{index} maps tensors to shards that do not hold them: {absent}")
        return {k: files[s] for k, s in weight_map.items()}
    if (directory / SINGLE).exists():
        f = SafetensorsFile(directory / SINGLE)
        return dict.fromkeys(f.entries, f)
    raise CheckpointFileError(
        f"{directory} has neither {SINGLE} nor {INDEX}; expected a Hugging Face checkpoint "
        "directory (config.json + safetensors)")
