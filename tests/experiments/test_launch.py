"""The study as one multi-controller program: N processes × M CPU devices on localhost, started by
``python -m experiments.launch`` (gloo collectives, the coordinator on 127.0.0.1), as JAX's own multiprocess tests
do. Each group run's files are compared with a one-process run of the same config on as many devices (equal) and on
one device (equal up to float reduction order); the launcher stopped stops the group."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import hosts
from experiments.study import adapters
from tests.experiments import tiny_reference

ROOT = Path(__file__).resolve().parents[2]
FAULT_STOP_SECONDS = 10  # README: the group is down this soon after a process fails (launcher's poll + kill)
# A short study on the tiny corpus: one selector, one random seed, one prompt, few resamples.
KEYS = dict(dataset_config="tiny", success_filter="false", buckets="4", prompts="asked", selectors="lap",
            random_seeds="0", bootstrap=20, permutations=20, resamples=2, answer_tokens=2, says_tokens=2,
            steer_items=4)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("pod")
    data_dir = root / "tfds"
    adapters.ensure_dataset("synthetic_prosody", "tiny", str(data_dir), "")  # built once, not by N processes at once
    args = dict(checkpoint=tiny_reference.build(root / "ref"), data_dir=data_dir, **KEYS)
    return "configs/study.py:local," + ",".join(f"{k}={v}" for k, v in args.items())


def study(config, workdir: Path, processes: int = 1, devices: int = 1, env=None, timeout: float = 900):
    """``experiments.run_study`` once (one process of ``devices`` CPU devices) or under the launcher (private scratch
    directories, a different PYTHONHASHSEED per process)."""
    env = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest", "JAX_PLATFORMS": "cpu", **(env or {})}
    command = [sys.executable, "-m", "experiments.run_study", f"--workdir={workdir}", f"--config={config}"]
    if processes == 1:
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
    else:
        command = [sys.executable, "-m", "experiments.launch", f"--processes={processes}",
                   f"--devices_per_process={devices}", f"--logs={workdir}.logs", f"--timeout={timeout}",
                   "--private_scratch", "--vary_hash_seed", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout + 60)


def ran(config, workdir, processes=1, devices=1) -> Path:
    done = study(config, workdir, processes, devices)
    assert done.returncode == 0, done.stdout + done.stderr
    return workdir


def listing(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())


def stage_arrays(workdir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every npz the run wrote (stage files, predictions, masks) but the model inputs (batches/)."""
    return {name: dict(np.load(workdir / name)) for name in listing(workdir)
            if name.endswith(".npz") and "/batches/" not in name}


def assert_same_run(got: Path, want: Path, exact: bool) -> None:
    """The same files; the same arrays (floats bit for bit when ``exact``, else to 1e-4: one device against several
    sums in another order), masks and parsed answers always exactly; results.json alike but for its ``sizing``."""
    assert listing(got) == listing(want)
    assert not [n for n in listing(got) if ".tmp" in n]
    a, b = stage_arrays(got), stage_arrays(want)
    for name in b:
        assert a[name].keys() == b[name].keys(), name
        for key, x in b[name].items():
            y = a[name][key]
            if x.dtype.kind == "f" and not exact:
                np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4, err_msg=f"{name}:{key}")
                if key.endswith("logp"):
                    assert np.array_equal(y.argmax(-1), x.argmax(-1)), f"{name}:{key} predictions"
            else:
                assert np.array_equal(y, x, equal_nan=x.dtype.kind == "f"), f"{name}:{key}"
    r_got, r_want = (json.loads((w / "results.json").read_text()) for w in (got, want))
    sizing = r_got.pop("sizing"), r_want.pop("sizing")
    assert sizing[0]["processes"] > 1 or sizing[1]["processes"] == 1
    if exact:
        assert r_got == r_want
    else:
        _assert_close(r_got, r_want)


def _assert_close(x, y, path="results"):
    if isinstance(y, dict):
        assert x.keys() == y.keys(), path
        for k in y:
            _assert_close(x[k], y[k], f"{path}.{k}")
    elif isinstance(y, list):
        assert len(x) == len(y), path
        for i, (p, q) in enumerate(zip(x, y, strict=True)):
            _assert_close(p, q, f"{path}[{i}]")
    elif isinstance(y, float):
        assert np.isclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True), f"{path}: {x} != {y}"
    else:
        assert x == y, path


def only_input_caches(scratch: Path) -> None:
    """A non-writing process wrote nothing but its own cache of model inputs."""
    written = [p for p in scratch.rglob("*") if p.is_file()]
    assert written and all(re.search(r"/host_\d+/batches/", str(p)) for p in written), written


@pytest.fixture(scope="module")
def single(config, tmp_path_factory):
    """One-process runs on 1, 4 and 8 devices."""
    return {n: ran(config, tmp_path_factory.mktemp(f"single{n}") / "work", 1, n) for n in (1, 4, 8)}


@pytest.mark.parametrize("processes,devices", [(2, 2), (4, 2)])
def test_group_run_equals_one_process(config, single, tmp_path, processes, devices):
    work = ran(config, tmp_path / "work", processes, devices)
    assert_same_run(work, single[processes * devices], exact=True)
    assert_same_run(work, single[1], exact=False)
    (scratch,) = Path(f"{work}.logs").glob("scratch-*")
    assert sorted(p.name for p in scratch.iterdir()) == [f"process_{i}" for i in range(1, processes)]
    for folder in scratch.iterdir():
        only_input_caches(folder)


def test_group_killed_in_a_later_stage_resumes(config, single, tmp_path):
    """Every process killed after the first steering batch is written; the rerun ends as an uninterrupted run."""
    work = tmp_path / "work"
    killed = study(config, work, 2, 2, env={"ESN_STUDY_CRASH_AFTER": "steer/p0:0"})
    assert killed.returncode == 75, killed.stdout + killed.stderr
    assert not (work / "results.json").exists() and list(work.glob("runs/*/steer/p0/00000.npz"))
    resumed = study(config, work, 2, 2)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_run(work, single[4], exact=True)


def test_fault_in_one_process_ends_the_group(config, tmp_path):
    work = tmp_path / "work"
    done = study(config, work, 2, 2, env={hosts.FAULT: "1:deactivate"})
    ended = time.time()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "process 1 exited with 1" in done.stderr and "InjectedFault" in done.stderr
    raised = float(re.search(r"at unix time ([\d.]+)", done.stderr).group(1))
    assert ended - raised < FAULT_STOP_SECONDS
    assert not (work / "report.md").exists() and not (work / "results.json").exists()


def test_launcher_stopped_stops_the_group(tmp_path):
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    logs = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, "-m", "experiments.launch", "--processes=2", f"--logs={logs}", "--",
                             sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not all((logs / f"process_{i}.log").exists() and (logs / f"process_{i}.log").read_text().strip()
                  for i in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pids = [int((logs / f"process_{i}.log").read_text().split()[0]) for i in range(2)]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=FAULT_STOP_SECONDS) == 128 + signal.SIGTERM
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
