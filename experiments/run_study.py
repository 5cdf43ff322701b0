r"""The project's main job: the emotion-sensitive-neuron study, end to end, with its report.

  python -m experiments.run_study --workdir=workdir/study [--config=configs/study.py[:key=value,...]] \
      [--mesh=data:4,model:2] [--distributed]

Clean evaluation → success-filtered identification statistics → LAP / LAPE / MAD / CAS / gradient
selectors at several k → deactivation matrices with matched random controls and bootstrap CIs → gain
sweep over α → agnostic Union / Mix / 2-Pass → layer histograms and overlaps → cross-dataset transfer
(``transfer_dataset=...``). Writes report.md, report.html, the plots, results.json, predictions.npz and
masks.npz to the workdir. Killed at any point and restarted with the same workdir and config, it resumes
(see experiments/study/stages.py) and ends with the same results. With ``--distributed`` (or under
``experiments.launch``) every host of a pod runs it as one program (README, "On a pod"; experiments/hosts.py).
"""

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from configs.study import validate
from experiments import devices, hosts
from experiments.study.run import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(Path(__file__).resolve().parent.parent / "configs" / "study.py"), "Study configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the stages' files, the report and results.json go.")
flags.mark_flags_as_required(["workdir"])


@hosts.exit_at_once
def main(argv):
    del argv
    devices.start()  # before any other JAX call
    logging.set_verbosity(logging.WARNING)  # orbax logs every write at INFO
    validate(_CONFIG.value)  # --config.key=value overrides bypass get_config's checks
    workdir = hosts.workdir(Path(_WORKDIR.value))
    results = run(_CONFIG.value, workdir, devices.mesh_from_flags())
    for f in results["findings"]:
        print(f"finding {f['id']}: {f['verdict']:13s} {f['claim']}")
    print(f"report: {workdir / 'report.md'}\nresults: {workdir / 'results.json'}")


if __name__ == "__main__":
    app.run(main)
