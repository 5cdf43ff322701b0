"""The ESN study's configuration: one source of truth for ``experiments/run_study.py``.

  --config=configs/study.py                                   the mini-LALM on synthetic_prosody (lean sizes)
  --config=configs/study.py:full                              the same, thorough (more items, k, α, seeds)
  --config=configs/study.py:local                             a fast variant (CI, a first look; two prompts)
  --config=configs/study.py:checkpoint=/ckpt/omni_jax,tokenizer=/ckpt/Qwen2.5-Omni-7B,dataset=iemocap
  --config=configs/study.py:checkpoint=/ckpt/kimi_jax,tokenizer=/ckpt/Kimi-Audio-7B-Instruct,speech_tokenizer=/ckpt/glm4_voice_tokenizer_jax
  --config=configs/study.py:checkpoint=/ckpt/qwen2_audio_jax,tokenizer=/ckpt/Qwen2-Audio-7B-Instruct
  --config=configs/study.py:checkpoint=/ckpt/voxtral_jax,tokenizer=/ckpt/Voxtral-Mini-3B-2507

The argument is ``key=value`` pairs separated by commas (``local`` alone is ``local=true``, ``full`` alone
``full=true``); list values use ``+`` between items (``ks=0.005+0.01``, ``selectors=lap+cas``). Unknown keys
raise a ValueError that lists the known ones. Empty strings mean "derive it": ``model`` from the checkpoint,
``checkpoint`` from the package's mini-LALM, ``tokenizer`` from the checkpoint, ``labels`` / ``question`` /
``system`` from the checkpoint's ``reference.json`` when it has one (else the dataset's four-class labels and
a generic question).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

# Where experiments/train_reference.py ships the trained projector (esn_jax.reference.mini_lalm.DEFAULT_DIR);
# a path, not an import, so that reading the config stays cheap.
REFERENCE_DIR = str(Path(__file__).resolve().parent.parent / "esn_jax" / "reference" / "mini_lalm")
SELECTORS = ("lap", "lape", "mad", "cas", "grad")  # the paper's four + gradient attribution
MODELS = ("qwen2_5_omni", "audio_flamingo3", "kimi_audio", "qwen2_audio", "voxtral")
ANSWERS = ("score", "generate")
AUTO = "auto"  # batch_size / variant_chunk: sized to the device that runs the study
SIZES = ("batch_size", "variant_chunk")  # an int >= 1 or AUTO
# Prompt variants (``prompts=``): each a question wording and an order of the label words, asked in the model's own
# chat layout. "asked" is the config's ``question`` (default: the checkpoint's reference.json, the wording the
# mini-LALM's projector was trained with); the others are templates filled with the label words, reordered.
PROMPTS = {
    "asked": None,
    "which": ("Which emotion does this voice convey: {labels}? Reply with a single word.", "reversed"),
    "listen": ("Listen to the speaker and name the emotion you hear, choosing one of {labels}.", "rotated"),
}


def defaults(local: bool = False, full: bool = False) -> dict:
    """Every key with its default; ``local`` shrinks the work (few items, few variants, few resamples),
    ``full`` grows it (the default is sized to run in minutes on two CPU cores)."""
    return dict(
        local=local,
        full=full,
        model="",  # default: what the checkpoint holds; set it to assert that
        checkpoint=REFERENCE_DIR,
        tokenizer="",  # default: the checkpoint directory
        # Kimi-Audio only: the GLM-4-Voice speech tokenizer (a converted checkpoint, or glm-4-voice-tokenizer's own
        # directory, converted in memory): it turns each clip into the discrete codes of Kimi's prompt
        speech_tokenizer="",
        dtype="",  # default: as stored; e.g. bfloat16 for 7B models on accelerators
        labels="",  # label words, '+'-separated, in the model's answer vocabulary
        question="",
        system="",  # default: the model's chat-template default; omni_voice: Qwen2.5-Omni's speech-output prompt
        dataset="synthetic_prosody",
        # tfds builder config (synthetic_prosody: small|large|tiny); default: the one the checkpoint was trained on when
        # its reference.json names this dataset (the mini-LALM: large, whose test voices it never heard), else the first
        dataset_config="",
        transfer_dataset="",  # a second dataset: select on `dataset`, intervene on this one
        transfer_dataset_config="",
        data_dir="",  # tfds data_dir; default ~/tensorflow_datasets
        manual_dir="",  # the user's copy of a real corpus, if it still has to be built
        view="four",  # four-class labels (emotion4), as the paper's IEMOCAP setup
        id_split="train",  # identification statistics
        eval_split="test",  # clean evaluation and every intervention
        transfer_id_split="train",
        transfer_eval_split="test",
        # 0 = the whole split; a seeded, label-stratified subset otherwise
        max_id_items=24 if local else (320 if full else 96),
        max_eval_items=16 if local else (160 if full else 32),
        # rows per batch, or "auto": the largest that fits memory_budget (experiments/study/sizes.py)
        batch_size=8 if local else 16,
        # seconds; one compiled shape per bucket that clips fall in (unused buckets cost nothing)
        buckets="3+4+8+16+30",
        site="gate_act",
        positions="all",
        success_filter=True,
        # the lean default runs the paper's four; gradient attribution (beyond the paper) costs a backward pass
        selectors="+".join(SELECTORS if local or full else SELECTORS[:4]),
        # Fractions of all L·I neurons (or counts >= 1): the paper's range at 7B is about 0.005-0.02, and 0.01
        # is LAPE's own kept share (Tang et al.); the mini-LALM has 30 × 1536 = 46,080 neurons.
        ks="0.05" if local else ("0.005+0.01+0.02" if full else "0.01"),
        main_k=1 if full else 0,  # index into ks of the k for steering, agnostic injection, layers, transfer
        # Gains ×(1 + α), scored (constrained) and answered freely (experiments/study/steering.py): the grid reaches
        # gains small enough that the model stays fluent; α is chosen per selector on held-out items
        alphas="0.5+4" if local else ("0.25+0.5+1+2+4+8" if full else "1+8"),
        # DiffMean (an emotion's mean activation minus the others', added ×c): its own factor grid and choice
        diffmean_factors="1+4" if local else ("0.5+1+2+4+8" if full else "1+4"),
        # free-form steering items (a seeded, label-stratified subset of eval_split; 0: the evaluation items): every
        # gain on the ESNs and on every random control is answered freely on each, half of them choose α
        steer_items=0 if local or full else 16,
        random_seeds="0+1+2",  # one matched random control per seed and mask
        # prompt variants (PROMPTS): statistics pool over them, every intervention is measured under each; the
        # lean default asks one (each more prompt costs about as much again as the intervention stages, see README)
        prompts="asked+which" if local else ("asked+which+listen" if full else "asked"),
        resamples=50 if full else 20,  # stratified resamples of the evaluation items in the stability grid
        bootstrap=50 if local else (1000 if full else 500),
        permutations=200 if local else (5000 if full else 2000),
        # How the model answers: "score" ranks the label words' log-probs (constrained, the paper's way); "generate"
        # lets it answer freely (greedy, answer_tokens tokens at most) and parses the answer to a label word
        # (experiments/study/answers.py); the identification statistics are gathered the same way in both
        answer="score",
        answer_tokens=8,
        says_tokens=24,  # the free answers of the report's "What the model says" (both modes)
        # Interventions scored per compiled call, or "auto": per batch shape, the most whose compiled sweep fits
        # memory_budget; either way a chunk that does not fit is halved (experiments/study/sizes.py)
        variant_chunk=AUTO,
        memory_budget=0,  # bytes per device a sweep may use; 0: esn_jax.sizing.HEADROOM of the device's memory
        seed=0,
    )


_LISTS = {"selectors": str, "ks": float, "alphas": float, "diffmean_factors": float, "random_seeds": int,
          "buckets": float, "labels": str, "prompts": str}


def parse_list(key: str, value: str) -> tuple:
    """'a+b+c' -> a typed tuple for the list-valued keys (the config stores the string)."""
    return tuple(_LISTS[key](v) for v in value.split("+") if v)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None, ``local``, or ``key=value,...`` (see the module docstring)."""
    pairs = {}
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        pairs[key.strip()] = value.strip() if sep else "true"
    local = pairs.pop("local", "false").lower() in ("1", "true", "yes")
    full = pairs.pop("full", "false").lower() in ("1", "true", "yes")
    if local and full:
        raise ValueError("choose at most one of local and full")
    values = defaults(local, full)
    unknown = sorted(set(pairs) - set(values))
    if unknown:
        raise ValueError(f"unknown study config keys {unknown}; known keys: {sorted(values)}")
    for key, raw in pairs.items():
        default = values[key]
        if key in SIZES:  # kept as written: "auto" stays a string, so the run directory is the same on every device
            values[key] = raw if raw == AUTO or not raw.isdigit() else int(raw)
        elif isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"{key}={raw!r} is not a boolean")
            values[key] = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            try:  # memory_budget may be written 8e9
                values[key] = int(float(raw)) if key == "memory_budget" else int(raw)
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not an integer") from None
        else:
            values[key] = raw
    cfg = ml_collections.ConfigDict(values)
    validate(cfg)
    return cfg


def size(value, key: str = "variant_chunk") -> int | None:
    """A ``batch_size`` / ``variant_chunk`` setting -> the int it names, None for "auto" (also read from the string
    a ``--config.KEY=`` override writes into a field that holds "auto"); a ValueError naming ``key`` otherwise."""
    if value == AUTO:
        return None
    number = int(value) if isinstance(value, int) or (isinstance(value, str) and value.isdigit()) else 0
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"{key}={value!r} must be an int >= 1 or {AUTO!r}")
    return number


def validate(cfg) -> None:
    """Raises a ValueError naming every bad value (run again on configs edited through --config.X flags)."""
    problems = []
    if cfg.model and cfg.model not in MODELS:
        problems.append(f"model={cfg.model!r} (choose from {MODELS}, or leave it empty: the checkpoint's)")
    bad = sorted(set(parse_list("selectors", cfg.selectors)) - set(SELECTORS))
    if bad or not parse_list("selectors", cfg.selectors):
        problems.append(f"selectors {bad or '(none)'} (choose from {SELECTORS})")
    prompts = parse_list("prompts", cfg.prompts)
    bad = sorted(set(prompts) - set(PROMPTS))
    if bad or not prompts or len(set(prompts)) != len(prompts):
        problems.append(f"prompts={cfg.prompts!r}: name each of {sorted(PROMPTS)} at most once (unknown: {bad})")
    for key in ("ks", "alphas", "diffmean_factors", "random_seeds", "buckets"):
        try:
            if not parse_list(key, getattr(cfg, key)):
                problems.append(f"{key} is empty")
        except ValueError as err:
            problems.append(f"{key}={getattr(cfg, key)!r}: {err}")
    if not problems:
        if not 0 <= cfg.main_k < len(parse_list("ks", cfg.ks)):
            problems.append(f"main_k={cfg.main_k} is not an index into ks={cfg.ks}")
        seeds = parse_list("random_seeds", cfg.random_seeds)
        if len(set(seeds)) != len(seeds):
            problems.append(f"random_seeds={cfg.random_seeds}: name each seed once")
        if any(a < -1 for a in parse_list("alphas", cfg.alphas)):
            problems.append(f"alphas={cfg.alphas}: a gain 1 + alpha must be >= 0")
        for key in ("alphas", "diffmean_factors"):
            grid = parse_list(key, getattr(cfg, key))
            if list(grid) != sorted(set(grid)) or 0 in grid:
                problems.append(f"{key}={getattr(cfg, key)}: list distinct nonzero values in increasing order (the "
                                "free-form steering interpolates along the grid from 0, the unedited model)")
    if cfg.answer not in ANSWERS:
        problems.append(f"answer={cfg.answer!r} (choose from {ANSWERS})")
    if cfg.view not in ("four", "full"):
        problems.append(f"view={cfg.view!r} (four or full)")
    if cfg.steer_items < 0:
        problems.append(f"steer_items={cfg.steer_items} must be >= 0 (0: the evaluation items)")
    for key in ("bootstrap", "permutations", "resamples", "answer_tokens", "says_tokens"):
        if getattr(cfg, key) < 1:
            problems.append(f"{key}={getattr(cfg, key)} must be >= 1")
    for key in SIZES:
        try:
            size(getattr(cfg, key), key)
        except ValueError as err:
            problems.append(str(err))
    if not isinstance(cfg.memory_budget, int) or cfg.memory_budget < 0:
        problems.append(f"memory_budget={cfg.memory_budget!r} must be a number of bytes >= 0 (0: the device's)")
    if problems:
        raise ValueError("bad study config: " + "; ".join(problems))
