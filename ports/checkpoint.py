"""Our checkpoint format: ``port.json`` (model name, config, dtype) + an orbax ``params/`` tree.

Writes are atomic: everything goes to a temporary sibling directory that is renamed onto the target
only once complete, so a failed or killed write never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from ports import sharding
from ports.models import abstract_params, spec

META = "port.json"
PARAMS = "params"


@contextlib.contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``out``; when the block succeeds it replaces ``out`` by a
    rename, when it fails it is removed. ``out`` is never seen half-written."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "new").mkdir()
        yield tmp / "new"
        if out.exists():  # moved aside, then removed with tmp
            os.replace(out, tmp / "old")
        os.replace(tmp / "new", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save(out: str | Path, model: str, config, params: Any, overwrite: bool = False) -> Path:
    """Writes ``params`` (a nested dict of arrays) for ``model`` with ``config`` at ``out``, atomically."""
    with atomic_directory(out, overwrite) as tmp:
        write(tmp, model, config, params)
    return Path(out).absolute()


def write(directory: Path, model: str, config, params: Any) -> None:
    """Writes ``port.json`` and ``params/`` into an existing empty ``directory`` (e.g. an atomic one)."""
    dtypes = {str(x.dtype) for x in jax.tree.leaves(params)}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS, params)
        ckptr.wait_until_finished()
    meta = {"model": model, "config": config.to_dict(), "dtype": dtypes.pop() if len(dtypes) == 1 else None}
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")


def load(path: str | Path, dtype=None, mesh=None):
    """Restores a converted checkpoint: returns ``(module, params)``.

    ``dtype`` (e.g. ``jnp.bfloat16``) casts parameters and computation; default: as stored.
    ``mesh``: restore every parameter straight into its shard (:mod:`ports.sharding`), never whole on
    one device.
    """
    path = Path(path).absolute()
    if not (path / META).exists():
        raise FileNotFoundError(f"{path} is not a converted checkpoint: no {META} (make one with "
                                "`python -m experiments.convert`)")
    meta = json.loads((path / META).read_text())
    config = spec(meta["model"]).config_cls.from_dict(meta["config"])
    dtype = jnp.dtype(dtype or meta["dtype"] or jnp.float32)
    module, abstract = abstract_params(meta["model"], config, dtype)
    if mesh is not None:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                                sharding.param_shardings(abstract, mesh))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(path / PARAMS, abstract)
    return module, params
