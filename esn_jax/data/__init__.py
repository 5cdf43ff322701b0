"""Emotional-speech corpora as tensorflow-datasets builders, and the pipeline that feeds them to the ports.

Importing this package registers the builders with tfds: ``iemocap``, ``meld``, ``msp_podcast``,
``crema_d_local``, ``ravdess``, ``esd``, ``emodb`` (each over the user's local copy, ``manual_dir``) and
``synthetic_prosody`` (synthesized offline; the embedded default). ``python -m experiments.prepare_data``
builds any of them; :mod:`esn_jax.data.pipeline` reads a built split into fixed-shape model batches.
"""

from esn_jax.data.base import ManualDirError, speaker_splits
from esn_jax.data.crema_d import CremaDLocal
from esn_jax.data.emodb import Emodb
from esn_jax.data.emotions import EMOTIONS, FOUR, MAPPINGS
from esn_jax.data.esd import Esd
from esn_jax.data.iemocap import Iemocap
from esn_jax.data.meld import Meld
from esn_jax.data.msp_podcast import MspPodcast
from esn_jax.data.ravdess import Ravdess
from esn_jax.data.synthetic_prosody import SyntheticProsody

BUILDERS = {cls.name: cls for cls in (Iemocap, Meld, MspPodcast, CremaDLocal, Ravdess, Esd, Emodb, SyntheticProsody)}

__all__ = ["BUILDERS", "EMOTIONS", "FOUR", "MAPPINGS", "CremaDLocal", "Emodb", "Esd", "Iemocap", "ManualDirError",
           "Meld", "MspPodcast", "Ravdess", "SyntheticProsody", "speaker_splits"]
