"""eSpeak NG through ctypes, from the ``espeakng-loader`` wheel (it ships libespeak-ng and its data):
no system package, no network.

The library keeps one global synthesizer, so this module initialises it once per process. Its random generator
(the breath noise of variants such as ``+f2``, ``+f3``, ``+f5``) is seeded from the clock at initialisation, so
every clip reseeds it: without that, those voices sound different in every process.
"""

from __future__ import annotations

import ctypes
import functools

import espeakng_loader
import numpy as np

_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS
_POS_CHARACTER = 1
_PARAMS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    def __init__(self):
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.sample_rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}) with data at "
                               f"{espeakng_loader.get_data_path()}")
        self.chunks: list[np.ndarray] = []
        self.callback = _CALLBACK(self._collect)  # kept on self: the library holds only a raw pointer
        self.lib.espeak_SetSynthCallback(self.callback)
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]

    def _collect(self, wav, n, _events):
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        return 0


@functools.cache
def _engine() -> _Engine:
    return _Engine()


def sample_rate() -> int:
    return _engine().sample_rate


def synthesize(text: str, voice: str, *, pitch: int, range_: int, rate: int, volume: int,
               seed: int = 0) -> np.ndarray:
    """-> [N] int16 at :func:`sample_rate` (22050 Hz). ``voice``: an eSpeak NG name such as ``en-us+f3``;
    pitch and range_ 0-100 (base pitch and its excursion), rate in words/minute, volume 0-200 (amplitude);
    seed: eSpeak NG's random generator (breath noise) for this clip."""
    engine = _engine()
    engine.lib.espeak_ng_SetRandSeed(int(seed))
    if engine.lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"eSpeak NG has no voice {voice!r}")
    for name, value in (("pitch", pitch), ("range", range_), ("rate", rate), ("volume", volume)):
        engine.lib.espeak_SetParameter(_PARAMS[name], int(value), 0)
    engine.chunks = []
    data = text.encode()
    status = engine.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
    engine.lib.espeak_Synchronize()
    if status != 0 or not engine.chunks:
        raise RuntimeError(f"eSpeak NG failed on {text!r} with voice {voice!r} (status {status})")
    return np.concatenate(engine.chunks)
