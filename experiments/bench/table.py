"""The headline table of one bench invocation (``--markdown=PATH``): every comparison it ran, ours against the
baseline, with the facts a reader needs to weigh it (date, commit, machine, GEMM peaks of the same run, library
versions, the exact command).

Every cell is a string the invocation also printed (:class:`Row` holds them as the comparisons' ``describe`` wrote
them; a ratio is looked up by name in the ratios the invocation printed last), so the page and the log agree.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ("jax", "jaxlib", "flax", "numpy", "torch", "transformers")
DIRECTION = ("Ratios are theirs / ours (seconds or memory: above 1, ours is faster or smaller), except "
             "`peak_fraction`: our GFLOP/s over the run's GEMM peak.")


@dataclass(frozen=True)
class Row:
    """One comparison against one baseline. ``baseline`` says which PyTorch form (naive: as its documentation
    runs it; careful: the work a careful user would not repeat taken out) or that it is no PyTorch side at all."""

    comparison: str
    ours: str
    baseline: str
    theirs: str
    ratio: str | None = None  # the name of a printed ratio (``name=value``)


def ratio_line(name: str, value: float) -> str:
    """How the bench prints a ratio, and so how the table shows it."""
    return f"{name}={value:.3f}"


def commit() -> str:
    """The checkout's short commit, marked when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        return head + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str, torch_device: str) -> str:
    """'2 CPU cores (…), 23.4 GiB; JAX on …; torch on …'."""
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cores} CPU cores ({cpu_model()}), {memory:.1f} GiB; JAX on {device}; torch on {torch_device}"


def versions() -> str:
    found = []
    for name in LIBRARIES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found)


def command(argv: list[str]) -> str:
    return " ".join(["python -m experiments.bench", *argv[1:]])


def markdown(rows: list[Row], ratios: dict[str, float], peaks: str, device: str, torch_device: str,
             argv: list[str] | None = None, today: datetime.date | None = None) -> str:
    """The table and its facts, a Markdown section. ``peaks``: the GEMM line the invocation printed."""
    today = today or datetime.datetime.now(datetime.UTC).date()
    lines = [
        f"### {today.isoformat()}, commit {commit()}",
        "",
        f"- machine: {machine(device, torch_device)}",
        f"- GEMM peaks of the same run: {peaks}",
        f"- libraries: {versions()}",
        f"- command: `{command(argv or sys.argv)}`",
        "",
        "| comparison | ours | baseline | theirs | ratio |",
        "|---|---|---|---|---|",
        *(f"| {r.comparison} | {r.ours} | {r.baseline} | {r.theirs} | "
          f"{'`' + ratio_line(r.ratio, ratios[r.ratio]) + '`' if r.ratio else ''} |" for r in rows),
        "",
        DIRECTION,
        "",
    ]
    return "\n".join(lines)


def write(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all (a temporary file renamed)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    tmp.replace(target)
