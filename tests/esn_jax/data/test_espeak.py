"""eSpeak NG synthesis is the same in every process, breathy voice variants included."""

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from esn_jax.data import espeak
for voice in ("en-gb-scotland+f5", "en-gb-x-rp+f2", "en-us+m1"):
    for seed in (0, 1):
        wave = espeak.synthesize("The train arrives today.", voice, pitch=50, range_=50, rate=165, volume=100,
                                 seed=seed)
        sys.stdout.write(wave.tobytes().hex() + "\\n")
"""


def test_breathy_voices_are_the_same_in_every_process():
    """f2/f3/f5 add breath noise from eSpeak NG's random generator, which the library seeds from the clock: two
    fresh processes gave different audio until every clip reseeded it."""
    runs = [subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[3]).stdout.split() for _ in range(2)]
    assert len(runs[0]) == 6 and all(len(h) > 20000 for h in runs[0])  # six clips of over a second
    assert runs[0] == runs[1]
