r"""Asks a model about your own clip and prints its answer: unedited and, with --masks, steered by a gain on one
emotion's neurons (the study's ESNs).

  python -m experiments.generate --audio=clip.wav [--checkpoint=esn_jax/reference/mini_lalm] [--question=...] \
      [--masks=workdir/study/masks.npz --selector=cas --k=0.01 --emotion=happy --alpha=8] [--max_new_tokens=32]

--audio: a WAV, FLAC, OGG or anything FFmpeg reads, at any sample rate, mono or multichannel (averaged to mono,
resampled to 16 kHz: :func:`esn_jax.data.audio.decode`), at most the model's longest clip (Audio Flamingo 3 /
the mini-LALM and Kimi-Audio: 20 windows of 30 s; Qwen2.5-Omni: 300 s). --checkpoint: the mini-LALM (the
default) or any converted model, loaded as the study loads it (``experiments.study.adapters.load_model``;
--tokenizer / --speech_tokenizer / --labels as the study config's keys). The prompt is the study's (the
model's chat layout, its own question unless --question), built from a one-clip pipeline batch.

--masks: the study's masks.npz (bool [S, K, 1 + R, E, L, I]: selector, k, ESNs then random controls, emotion in
the model's label-word order, layer, neuron); --selector / --k / --emotion pick one ESN mask [L, I] and the
neurons get gain 1 + --alpha (-1 ablates). Both answers come from one ``esn_jax.generate`` call with two
variants, the first a mask of no neuron. Greedy decoding, stopped after the end of turn / end of text
(``ports.prompts.stop_token_ids``); the answers are decoded as the study decodes them (special tokens left out).
"""

import inspect
import math
from pathlib import Path

import numpy as np
from absl import app, flags, logging

import esn_jax
from configs.study import get_config
from esn_jax.data import audio, pipeline
from esn_jax.reference import mini_lalm
from experiments.study import adapters, answers
from experiments.study.evidence import esn_mask
from ports import prompts
from ports.features import SAMPLE_RATE, WINDOW_SECONDS

_AUDIO = flags.DEFINE_string("audio", None, "The clip: WAV, FLAC, ... at any sample rate, mono or stereo.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", str(mini_lalm.DEFAULT_DIR),
                                  "A mini-LALM directory (the default) or our converted checkpoint.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Tokenizer directory (default: the checkpoint's).")
_SPEECH_TOKENIZER = flags.DEFINE_string("speech_tokenizer", "", "Kimi-Audio only: the GLM-4-Voice tokenizer.")
_LABELS = flags.DEFINE_string("labels", "", "Label words, '+'-separated, as the study's (default: reference.json).")
_QUESTION = flags.DEFINE_string("question", "", "The question (default: the model's own, as the study asks it).")
_MASKS = flags.DEFINE_string("masks", None, "masks.npz of a study run; with it the steered answer is printed too.")
_SELECTOR = flags.DEFINE_string("selector", "cas", "Which selector's masks.")
_K = flags.DEFINE_float("k", 0.01, "Which k (as in the study's ks).")
_EMOTION = flags.DEFINE_string("emotion", None, "Label word or index of the emotion whose neurons are steered.")
_ALPHA = flags.DEFINE_float("alpha", 8.0, "Gain 1 + alpha on the emotion's neurons (>= -1; -1 ablates).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 32, "The longest answer, in tokens.")
flags.mark_flag_as_required("audio")


def read_clip(path: str) -> tuple[np.ndarray, list[str]]:
    """-> (waveform [N] float32 at 16 kHz, the fixes applied); a UsageError names the file and what is wrong."""
    try:
        return audio.decode(path)
    except audio.BadAudio as e:
        raise app.UsageError(f"--audio={path}: {e.reason}: {e}") from None


def longest_clip(model_name: str) -> float:
    """Seconds: the longest clip the model's feature function (:mod:`ports.features`) takes, read from its
    defaults: Qwen2.5-Omni's ``max_seconds``, Audio Flamingo 3's ``max_windows`` / Kimi-Audio's ``max_segments``
    30-s windows."""
    limits = inspect.signature(pipeline.FEATURES[model_name]).parameters
    if "max_seconds" in limits:
        return float(limits["max_seconds"].default)
    return float((limits.get("max_windows") or limits["max_segments"]).default * WINDOW_SECONDS)


def one_clip_batch(model: adapters.Model, wave: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """The port's forward kwargs for one clip, made as the study makes them (a pipeline batch of one row in a
    bucket of the clip's whole seconds, then ``prompt_inputs``): input_ids [1, T], attention_mask [1, T], features."""
    cfg = get_config()
    cfg.batch_size, cfg.buckets = 1, str(max(1, math.ceil(wave.size / SAMPLE_RATE)))
    example = pipeline.Example(wave, label=0, speaker="", id=name)  # the label is not used: no answer is scored
    return adapters.model_inputs(next(adapters.batches(model, [example], cfg)))


def answer(model: adapters.Model, ids: np.ndarray, length: int, max_new_tokens: int, stops: tuple[int, ...]) -> str:
    """ids [N] -> the text of the first ``length`` tokens as the study decodes answers (special tokens left out),
    its continuation lines indented, with a note when it is empty or was cut at ``max_new_tokens``."""
    text = answers.decode(model.tokenizer, ids[None], np.array([length]))[0].replace("\n", "\n  ")
    cut = length == max_new_tokens and int(ids[length - 1]) not in stops
    return (text or "[no text]") + (f" [cut at --max_new_tokens={max_new_tokens}]" if cut else "")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if _ALPHA.value < -1:
        raise app.UsageError(f"--alpha={_ALPHA.value:g}: the gain 1 + alpha must be >= 0 (-1 ablates)")
    if _MAX_NEW_TOKENS.value < 1:
        raise app.UsageError(f"--max_new_tokens={_MAX_NEW_TOKENS.value} must be >= 1")
    if bool(_MASKS.value) != bool(_EMOTION.value):
        raise app.UsageError("--masks and --emotion go together: the steered answer needs both")
    wave, fixes = read_clip(_AUDIO.value)
    cfg = get_config()
    cfg.checkpoint, cfg.tokenizer, cfg.speech_tokenizer = _CHECKPOINT.value, _TOKENIZER.value, _SPEECH_TOKENIZER.value
    cfg.labels, cfg.question = _LABELS.value, _QUESTION.value
    try:
        model = adapters.load_model(cfg)
        limit, seconds = longest_clip(model.name), wave.size / SAMPLE_RATE
        if seconds > limit:
            raise ValueError(f"--audio={_AUDIO.value}: too long: {seconds:.1f} s; the model ({model.name}) takes "
                             f"clips of at most {limit:g} s")
        mask = esn_mask(_MASKS.value, _SELECTOR.value, _K.value, _EMOTION.value, model.labels,
                        esn_jax.model_dims(model.params)) if _MASKS.value else None
        stops = prompts.stop_token_ids(model.tokenizer)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    batch = one_clip_batch(model, wave, Path(_AUDIO.value).name)
    n = _MAX_NEW_TOKENS.value
    print(f"audio: {_AUDIO.value} ({seconds:.2f} s{''.join(f', {f}' for f in fixes)})")
    print(f"model: {model.name} ({_CHECKPOINT.value})")
    print(f"question: {model.question}")
    names = ["unedited"]
    if mask is None:
        ids, lengths = esn_jax.generate(model.module, model.params, batch, n, stop_token_ids=stops)
        ids, lengths = ids[None], lengths[None]  # [V = 1, B = 1, N], [1, 1]
    else:
        # Variant 0 scales no neuron (gain 1 everywhere: exactly the unedited model), so both answers come from
        # one compiled program.
        variants = esn_jax.gain(np.stack([np.zeros_like(mask), mask]), _ALPHA.value)
        ids, lengths = esn_jax.generate(model.module, model.params, batch, n, variants, stop_token_ids=stops)
        emotion = model.labels[int(_EMOTION.value)] if _EMOTION.value.isdigit() else _EMOTION.value
        names.append(f"{emotion} ESNs x(1{_ALPHA.value:+g}), {_SELECTOR.value} k={_K.value:g}, {int(mask.sum())} "
                     "neurons")
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    for v, name in enumerate(names):
        print(f"answer ({name}): {answer(model, ids[v, 0], int(lengths[v, 0]), n, stops)}")


if __name__ == "__main__":
    app.run(main)
