"""``synthetic_prosody``: the embedded default corpus (DESIGN §5), synthesized offline with eSpeak NG.

Honest name: it plants prosodic cues, it is not acted emotion. Every sentence is spoken by every voice in
every profile, so the text carries no label information; only prosody (and the voice, which is held out
across splits) differs. Profiles, as eSpeak NG parameters (pitch and range 0-100, rate in words/min,
volume 0-200 = amplitude):

=========  =====  =====  ====  ======  =============================================
profile    pitch  range  rate  volume  cue
=========  =====  =====  ====  ======  =============================================
neutral    48     35     165   100     mid pitch, moderate range, normal rate
happy      72     90     195   125     high pitch, wide range, fast, a little louder
sad        30     10     125   65      low pitch, flat, slow, quiet
angry      56     65     215   170     mid-high pitch, fast, loud
=========  =====  =====  ====  ======  =============================================

Each voice gets a seeded pitch offset (±8, the same for all its clips: speakers differ), and each clip a
seeded jitter (pitch ±5, range ±5, rate ±8, volume ±10), so the classes overlap a little but stay
separable. Voices: eSpeak NG English accents × its voice variants (``en-us+f3``); sentences: neutral
templates. Splits: speaker(voice)-disjoint train/validation/test by a seeded permutation of the voices.
Deterministic for a config when built in a fresh process (same seed -> the same waveforms, bit for bit):
eSpeak NG carries state from one utterance to the next that its API does not reset, so a clip depends on
the clips synthesized before it in the process, and the build order is fixed; its random generator (breath
noise of the ``+f2``/``+f3``/``+f5`` variants) is reseeded for every clip from the clip's key (1.0.0 left it to the
clock: those voices differed between builds). Audio: 22.05 kHz synthesis
resampled to 16 kHz, stored as int16.

Configs: ``small`` (default): 4 profiles × 10 voices × 20 sentences = 800 clips (6/2/2 voices);
``large``: 4 × 24 × 60 = 5760 clips (18/3/3 voices); ``tiny``: 4 × 3 × 2 = 24 clips (1/1/1) for smoke tests.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib

import numpy as np
import tensorflow_datasets as tfds

from esn_jax.data import audio, emotions, espeak
from esn_jax.data.base import features, speaker_splits

PROFILES = {  # name: (pitch, range, rate, volume)
    "neutral": (48, 35, 165, 100),
    "happy": (72, 90, 195, 125),
    "sad": (30, 10, 125, 65),
    "angry": (56, 65, 215, 170),
}
_JITTER = (5, 5, 8, 10)
_VOICE_PITCH_OFFSET = 8
_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
_VARIANTS = ("m1", "f1", "m3", "f2", "m2", "f3", "m4", "f4", "m5", "f5", "m6", "m7")
_SUBJECTS = ("The train", "My neighbour", "The letter", "This report", "Our teacher", "The meeting",
             "The small dog", "Her brother")
_VERBS = ("arrives", "is ready", "was moved", "will start", "came back", "stays here")
_TIMES = ("at seven", "on Monday", "after lunch", "this evening", "in the morning", "next week", "today")


@dataclasses.dataclass(eq=False)
class SyntheticProsodyConfig(tfds.core.BuilderConfig):
    """voices and sentences per profile; split_voices: (train, validation, test) voice counts."""

    voices: int = 10
    sentences: int = 20
    split_voices: tuple[int, int, int] = (6, 2, 2)
    seed: int = 0


def voices(n: int) -> list[str]:
    """The first ``n`` of accent × variant, alternating accents and genders (at most 72)."""
    grid = [f"{_ACCENTS[i % len(_ACCENTS)]}+{_VARIANTS[(i // len(_ACCENTS) + i) % len(_VARIANTS)]}"
            for i in range(len(_ACCENTS) * len(_VARIANTS))]
    if n > len(grid):  # the grid has no repeats: i and i + 6k differ in variant by 7k mod 12
        raise ValueError(f"at most {len(grid)} voices are available; asked for {n}")
    return grid[:n]


def sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct neutral sentences drawn (seeded) from subject × verb × time."""
    grid = [f"{s} {v} {t}." for s, v, t in itertools.product(_SUBJECTS, _VERBS, _TIMES)]
    if n > len(grid):
        raise ValueError(f"at most {len(grid)} sentences are available; asked for {n}")
    order = np.random.default_rng(seed).permutation(len(grid))[:n]
    return [grid[i] for i in sorted(order)]


class SyntheticProsody(tfds.core.GeneratorBasedBuilder):
    """Planted prosody profiles spoken by eSpeak NG voices; the project's default corpus."""

    VERSION = tfds.core.Version("1.0.1")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.0.1": "eSpeak NG's random generator reseeded per clip: breathy voices equal in every build."}
    BUILDER_CONFIGS = [
        SyntheticProsodyConfig(name="small", description="4 profiles x 10 voices x 20 sentences"),
        SyntheticProsodyConfig(name="large", voices=24, sentences=60, split_voices=(18, 3, 3),
                               description="4 profiles x 24 voices x 60 sentences"),
        SyntheticProsodyConfig(name="tiny", voices=3, sentences=2, split_voices=(1, 1, 1),
                               description="4 profiles x 3 voices x 2 sentences: smoke tests"),
    ]

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=features(), homepage="https://github.com/espeak-ng/espeak-ng",
                                              metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        names = voices(cfg.voices)
        n = len(names)
        fractions = tuple(k / n for k in cfg.split_voices)
        if sum(cfg.split_voices) != n:
            raise ValueError(f"split_voices={cfg.split_voices} must add up to voices={n}")
        split_of = speaker_splits(names, cfg.seed, fractions)
        texts = sentences(cfg.sentences, cfg.seed)
        self.info.metadata.update({"voices": split_of, "sentences": texts, "profiles": PROFILES})
        return {split: self._generate_examples(sorted(v for v in names if split_of[v] == split), texts)
                for split in ("train", "validation", "test")}

    def _generate_examples(self, split_voices, texts):
        cfg = self.builder_config
        for voice in split_voices:
            # One generator per voice, seeded by its name: the parameters do not depend on the other voices.
            rng = np.random.default_rng([cfg.seed, *voice.encode()])
            offset = int(rng.integers(-_VOICE_PITCH_OFFSET, _VOICE_PITCH_OFFSET + 1))
            for (t, text), emotion in itertools.product(enumerate(texts), emotions.FOUR):
                base = np.array(PROFILES[emotion]) + np.array([offset, 0, 0, 0])
                pitch, range_, rate, volume = base + rng.integers(-np.array(_JITTER), np.array(_JITTER) + 1)
                key = f"{voice}/{t:03d}/{emotion}"
                raw = espeak.synthesize(text, voice, pitch=int(np.clip(pitch, 0, 100)),
                                        range_=int(np.clip(range_, 0, 100)), rate=rate, volume=volume,
                                        seed=zlib.crc32(key.encode()))
                wave = audio.resample(audio.to_float(raw), espeak.sample_rate())
                yield key, {"audio": audio.to_int16(wave), "emotion": emotions.EMOTIONS.index(emotion),
                            "emotion4": emotions.FOUR.index(emotion), "label": emotion, "speaker": voice, "id": key}
