"""Model-specific glue for the study: loading a checkpoint with its tokenizer and label words, picking the
items of a split, and turning pipeline batches into each model's prompt + feature inputs.

Everything model-specific goes through :mod:`ports.prompts`, :mod:`ports.features` (via
:mod:`esn_jax.data.pipeline`) and :func:`ports.load`; the stages only see ``Model`` and batch dicts.
Batch dicts hold numpy arrays: the port's forward kwargs, plus ``labels`` [B] (index into the model's label
words), ``valid`` [B] bool (False on the rows that fill a short last batch) and ``ids`` [B] str.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ports
from configs.study import PROMPTS, parse_list
from esn_jax.data import BUILDERS, EMOTIONS, FOUR, pipeline
from esn_jax.data.prepare import prepare
from esn_jax.reference import mini_lalm, wordings
from ports import prompts, sharding
from ports.audio import output_lengths
from ports.convert import from_hf_dir
from ports.features import SAMPLE_RATE, WINDOW_SECONDS


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded model and how to ask it. label_token_ids: one token sequence per label word [E]."""

    name: str
    module: object
    params: object
    tokenizer: object
    labels: tuple[str, ...]
    label_token_ids: tuple[tuple[int, ...], ...]
    question: str
    system: str | None
    n_mels: int
    speech_tokenizer: tuple | None = None  # Kimi-Audio: (module, params) of the GLM-4-Voice tokenizer
    corpus: str = ""  # the tfds name the checkpoint was trained on (reference.json's "dataset"), if it says


def default_question(labels: Sequence[str]) -> str:
    return f"What emotion does the speaker express? Answer with one word: {', '.join(labels)}."


def questions(model: Model, names: Sequence[str]) -> tuple[str, ...]:
    """The question of each prompt variant in ``names`` (:data:`configs.study.PROMPTS`): ``asked`` is the
    model's own question; the others list the label words in their variant's order (reversed, or rotated by two)."""
    out = []
    for name in names:
        if PROMPTS[name] is None:
            out.append(model.question)
            continue
        template, order = PROMPTS[name]
        words = list(model.labels)
        words = words[::-1] if order == "reversed" else words[2:] + words[:2]
        out.append(template.format(labels=wordings.word_list(words)))
    return tuple(out)


def load_model(cfg, mesh=None) -> Model:
    """The checkpoint (``ports.load``), its tokenizer and label words; ``reference.json`` fills what the
    config leaves empty."""
    ckpt = Path(cfg.checkpoint)
    if mini_lalm.is_mini_lalm(ckpt):  # assembled from the installed packages + the trained projector
        stored = "audio_flamingo3"
    elif (ckpt / "port.json").exists():
        stored = json.loads((ckpt / "port.json").read_text())["model"]
    else:
        raise FileNotFoundError(f"checkpoint={ckpt} holds neither port.json nor {mini_lalm.PROJECTOR}: train the "
                                "reference model (python -m experiments.train_reference) or convert one (python -m "
                                "experiments.convert)")
    if cfg.model and stored != cfg.model:
        raise ValueError(f"model={cfg.model!r} but {ckpt} holds a {stored!r} checkpoint")
    ref = json.loads((ckpt / "reference.json").read_text()) if (ckpt / "reference.json").exists() else {}
    if mini_lalm.is_mini_lalm(ckpt):
        module, params, _, _ = mini_lalm.load(ckpt, dtype=cfg.dtype or None)
        params = sharding.shard_params(params, mesh) if mesh is not None else params
    else:
        module, params = ports.load(ckpt, dtype=cfg.dtype or None, mesh=mesh)
    tokenizer = prompts.load_tokenizer(cfg.tokenizer or ckpt)
    labels = parse_list("labels", cfg.labels)
    if labels:
        token_ids = tuple(tuple(tokenizer.encode(w, add_special_tokens=False)) for w in labels)
    elif ref:
        labels, token_ids = tuple(ref["labels"]), tuple(tuple(ids) for ids in ref["label_token_ids"])
    else:
        labels = FOUR if cfg.view == "four" else EMOTIONS
        token_ids = tuple(tuple(tokenizer.encode(w, add_special_tokens=False)) for w in labels)
    if any(not ids for ids in token_ids):
        raise ValueError(f"a label word encodes to no tokens: {dict(zip(labels, token_ids, strict=True))}")
    system = cfg.system or ref.get("system") or None
    system = prompts.SYSTEM_PRESETS.get(system, system)
    encoder = getattr(module.config, "audio", None) or getattr(module.config, "whisper", None)
    n_mels = encoder.num_mel_bins if encoder is not None else 128
    speech = None
    if stored == "voxtral" and system:
        # mistral-common refuses a system message beside audio (before tokenizer v13); the model card: "System
        # prompts are not yet supported".
        raise ValueError(f"system={system!r}: Voxtral's prompt layout with audio has no system message; leave it "
                         "empty")
    if stored == "kimi_audio":
        if system:
            raise ValueError(f"system={system!r}: Kimi-Audio's prompt layout has no system message; leave it empty")
        # The tokenizer is the source of truth for the blank the model feeds under a text answer.
        blank = prompts.kimi_audio_tokens(tokenizer)["<|im_kimia_text_blank|>"]
        module = module.clone(config=dataclasses.replace(module.config, text_blank_id=blank))
        speech = load_speech_tokenizer(cfg.speech_tokenizer)
        if speech[0].config.encoder.num_mel_bins != n_mels:
            raise ValueError(f"speech_tokenizer={cfg.speech_tokenizer} takes {speech[0].config.encoder.num_mel_bins} "
                             f"mel bins but Kimi-Audio's Whisper takes {n_mels}; both read the same features")
    return Model(stored, module, params, tokenizer, tuple(labels), token_ids,
                 cfg.question or ref.get("question") or default_question(labels), system, n_mels, speech,
                 ref.get("dataset", ""))


def load_speech_tokenizer(path: str) -> tuple:
    """(module, params) of the GLM-4-Voice speech tokenizer in float32 (as the official code runs it), from a
    converted checkpoint (``python -m experiments.convert --model=glm4_voice_tokenizer``) or from
    glm-4-voice-tokenizer's own directory (config.json + safetensors), converted in memory."""
    if not path:
        raise ValueError("model=kimi_audio needs speech_tokenizer=DIR: the GLM-4-Voice tokenizer that gives each clip "
                         "its discrete codes (glm-4-voice-tokenizer's directory, or its conversion with python -m "
                         "experiments.convert --model=glm4_voice_tokenizer)")
    path = Path(path)
    if (path / "port.json").exists():
        stored = json.loads((path / "port.json").read_text())["model"]
        if stored != "glm4_voice_tokenizer":
            raise ValueError(f"speech_tokenizer={path} holds a {stored!r} checkpoint; expected glm4_voice_tokenizer")
        return ports.load(path, dtype=jnp.float32)
    if (path / "config.json").exists():
        config, params = from_hf_dir(path, "glm4_voice_tokenizer", "float32")
        return ports.MODELS["glm4_voice_tokenizer"].build(config, jnp.float32), params
    raise FileNotFoundError(f"speech_tokenizer={path} holds neither port.json (a converted checkpoint) nor config.json "
                            "(glm-4-voice-tokenizer's own directory)")


def ensure_dataset(name: str, config: str, data_dir: str, manual_dir: str, own: str = "") -> str:
    """Builds the dataset when it is not there yet (synthetic_prosody needs nothing; real corpora need
    ``manual_dir``); returns the name ``tfds.data_source`` reads.

    An empty ``config`` is the builder config of ``own`` (the model's training corpus, ``Model.corpus``) when that
    is the same dataset, so that the mini-LALM is evaluated on the held-out voices of the corpus it was trained
    on; else the builder's default."""
    if name not in BUILDERS:
        raise ValueError(f"dataset={name!r}; available: {sorted(BUILDERS)}")
    own_name, _, own_config = own.partition("/")
    config = config or (own_config if own_name == name else "")
    builder = BUILDERS[name](data_dir=data_dir or None, config=config or None)
    if not builder.is_prepared():
        prepare(name, manual_dir or None, data_dir or None, config or None)
    return f"{name}/{builder.builder_config.name}" if builder.builder_config else name


def pick_items(examples, class_names: Sequence[str], labels: Sequence[str], max_items: int,
               seed: int) -> list[pipeline.Example]:
    """The examples whose class is one of the model's label words, relabelled to that word's index; at most
    ``max_items`` (0 = all), drawn per class in turn from a seeded shuffle so that classes stay balanced."""
    index = {w.strip().lower(): i for i, w in enumerate(labels)}
    pool: dict[int, list] = {i: [] for i in range(len(labels))}
    for ex in examples:
        target = index.get(class_names[ex.label])
        if target is not None:
            pool[target].append(dataclasses.replace(ex, label=target))
    rng = np.random.default_rng(seed)
    queues = [[group[j] for j in rng.permutation(len(group))] for group in pool.values()]
    limit = max_items or sum(map(len, queues))
    picked = []
    while len(picked) < limit and any(queues):
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    if not picked:
        raise ValueError(f"no item of the split has a class among the label words {list(labels)}")
    return picked


def read_items(cfg, model: Model, dataset: str, split: str, max_items: int, seed: int) -> list[pipeline.Example]:
    """The picked items of a built split (see :func:`pick_items`)."""
    names = FOUR if cfg.view == "four" else EMOTIONS
    return pick_items(pipeline.read(dataset, split, cfg.data_dir or None, cfg.view), names, model.labels,
                      max_items, seed)


def batches(model: Model, examples: Sequence[pipeline.Example], cfg,
            rows: slice | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape model batches (one prompt length per bucket, so jit compiles once per bucket): the model inputs
    of the batch's ``rows`` (default all; a host of a multi-host run featurizes only its own) and every row's
    ``labels``, ``valid`` and ``ids`` [B]."""
    pcfg = pipeline.PipelineConfig(model=model.name, batch_size=cfg.batch_size,
                                   buckets=parse_list("buckets", cfg.buckets), n_mels=model.n_mels)
    rows = rows or slice(0, cfg.batch_size)
    mine = dataclasses.replace(pcfg, batch_size=rows.stop - rows.start)
    for group, seconds in pipeline.Batches(examples, pcfg).groups():
        padded = group + [group[-1]] * (cfg.batch_size - len(group))  # as pipeline.make_batch pads
        batch = pipeline.make_batch(padded[rows], seconds, mine)
        yield {**prompt_inputs(model, batch), "labels": np.array([ex.label for ex in padded], np.int32),
               "valid": np.arange(cfg.batch_size) < len(group), "ids": np.array([ex.id for ex in padded])}


def _prompt(model: Model, n_audio: int) -> str:
    """The model's chat prompt (:mod:`ports.prompts`) for one clip of ``n_audio`` audio tokens; the model's own
    default system prompt when ``model.system`` is empty (Voxtral: none)."""
    write = getattr(prompts, model.name)  # qwen2_5_omni, audio_flamingo3, qwen2_audio, voxtral
    return write(model.question, n_audio, **({"system": model.system} if model.system else {}))


def _audio_counts(model: Model, feats: dict[str, np.ndarray]) -> np.ndarray:
    """Each clip's audio-token count [C]; pops from ``feats`` what is not a forward kwarg of the port."""
    if model.name == "qwen2_5_omni":
        return output_lengths(feats["feature_attention_mask"].sum(1))
    counts = feats.pop("num_audio_tokens")
    windows = feats.pop("windows_per_clip", None)  # audio_flamingo3, voxtral
    if model.name == "voxtral":
        # The features count 375 tokens per window, as mistral-common does; the adapter must give as many.
        per_window = model.module.config.tokens_per_window
        if not np.array_equal(counts, windows * per_window):
            raise ValueError(f"the features give {counts.tolist()} audio tokens for {windows.tolist()} 30-s windows "
                             f"but this Voxtral's adapter makes {per_window} tokens per window")
    return counts


def _longest_audio(model: Model, seconds: float) -> int:
    """The most audio tokens a clip of a ``seconds`` bucket gives."""
    if model.name == "voxtral":  # whole windows, every frame a token's (nothing is masked)
        return model.module.config.tokens_per_window * math.ceil(seconds / WINDOW_SECONDS)
    if model.name == "qwen2_audio":  # one window at most (its features refuse longer clips)
        seconds = min(seconds, WINDOW_SECONDS)
    return int(output_lengths(int(seconds * 100)))


def prompt_inputs(model: Model, batch: pipeline.Batch) -> dict[str, np.ndarray]:
    """A pipeline batch -> the port's forward kwargs: left-padded ids [B, T] and attention_mask [B, T] with T
    fixed by the bucket, plus the features."""
    if model.name == "kimi_audio":
        return _kimi_inputs(model, batch)
    feats = dict(batch.features)
    counts = _audio_counts(model, feats)
    tok = prompts.tokenize(model.tokenizer, [_prompt(model, int(n)) for n in counts])
    # The longest prompt a clip of this bucket can give fixes T (audio tokens of a full bucket).
    width = len(model.tokenizer.encode(_prompt(model, _longest_audio(model, batch.seconds)),
                                       add_special_tokens=False))
    pad = width - tok["input_ids"].shape[1]
    ids = np.pad(tok["input_ids"], ((0, 0), (pad, 0)), constant_values=model.tokenizer.pad_token_id)
    mask = np.pad(tok["attention_mask"], ((0, 0), (pad, 0)))
    return {"input_ids": ids, "attention_mask": mask, **feats}


def _kimi_inputs(model: Model, batch: pipeline.Batch) -> dict[str, np.ndarray]:
    """Kimi-Audio's two streams [B, T] (``ports.prompts.kimi_audio``, left-padded to the bucket's longest prompt),
    is_continuous_mask [B, T], attention_mask [B, T] and the Whisper segments; each clip's codes come from the
    speech tokenizer (its segments' valid codes in order, + the model's token offset)."""
    feats = dict(batch.features)
    per_clip, counts = feats.pop("segments_per_clip"), feats.pop("num_audio_tokens")
    real = int(per_clip.sum())  # the rows after them only pad the bucket's window count
    codes, valid = _speech_codes(model.speech_tokenizer[0], model.speech_tokenizer[1],
                                 feats.pop("tokenizer_input_features")[:real], feats.pop("tokenizer_input_mask")[:real])
    codes, valid = np.asarray(codes), np.asarray(valid)
    ends = np.cumsum(per_clip)
    rows = []
    for i, (start, end) in enumerate(zip(ends - per_clip, ends, strict=True)):
        clip = np.concatenate([c[v] for c, v in zip(codes[start:end], valid[start:end], strict=True)])
        if clip.size != counts[i]:  # the tokenizer's 12.5 Hz and the Whisper stack's must agree
            raise ValueError(f"clip {batch.ids[i]}: the speech tokenizer gives {clip.size} codes but Kimi-Audio's "
                             f"Whisper features give {counts[i]} tokens")
        rows.append(prompts.kimi_audio(model.tokenizer, model.question,
                                       (clip + model.module.config.token_offset).tolist()))
    blank = prompts.kimi_audio_tokens(model.tokenizer)["<|im_kimia_text_blank|>"]
    out = prompts.left_pad(rows, blank)
    longest = model.speech_tokenizer[0].config.num_codes(int(batch.seconds * SAMPLE_RATE))
    width = len(prompts.kimi_audio(model.tokenizer, model.question, [0] * longest)["input_ids"])
    pad = ((0, 0), (width - out["input_ids"].shape[1], 0))
    out = {k: np.pad(v, pad, constant_values=blank if k.endswith("input_ids") else 0) for k, v in out.items()}
    return {**out, **feats}


@functools.partial(jax.jit, static_argnums=0)
def _speech_codes(module, params, features, mask):
    return module.apply({"params": params}, features, mask)


MODEL_INPUTS_EXCLUDED = ("labels", "valid", "ids")  # every row's, where the inputs may be one host's rows


def model_inputs(batch: dict) -> dict:
    """The port's forward kwargs of a saved batch dict."""
    return {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDED}
