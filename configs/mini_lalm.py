"""Training the mini-LALM's projector (``python -m experiments.train_reference``, the default config).

``--config=configs/mini_lalm.py`` (the shipped projector) or ``--config=configs/mini_lalm.py:tiny`` (a few
steps on the ``tiny`` corpus: tests and a first look). The model itself is fixed by the two packaged networks
(:mod:`esn_jax.reference.mini_lalm`); only the projector's training is configured here.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: ``default`` or ``tiny``."""
    if arg not in (None, "default", "tiny"):
        raise ValueError(f"unknown config variant {arg!r}; expected 'default' or 'tiny'")
    tiny = arg == "tiny"
    cfg = ml_collections.ConfigDict()
    cfg.model = "mini_lalm"
    cfg.seed = 0
    cfg.dataset = "synthetic_prosody/tiny" if tiny else "synthetic_prosody/small"
    cfg.labels = ("neutral", "happy", "sad", "angry")  # esn_jax.data.FOUR order: the "four" view's label index
    cfg.question = "What emotion does the speaker express? Answer with one word: neutral, happy, sad or angry."
    cfg.system = None  # None: SmolLM2's own default system prompt (mini_lalm.SYSTEM)
    cfg.batch_size = 8 if tiny else 16
    cfg.eval_batch_size = 8 if tiny else 16
    # Audio tokens per training row are padded up to one of these clip lengths (seconds, 25 tokens/s): one
    # compiled shape each, little padding. Longer clips are truncated to the last.
    cfg.buckets = (3.0,) if tiny else (2.0, 3.0)
    cfg.steps = 4 if tiny else 200
    cfg.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=2 if tiny else 20, weight_decay=0.0, b1=0.9, b2=0.98, clip_norm=1.0))
    cfg.log_every = 2 if tiny else 20
    cfg.eval_every = 0 if tiny else 50  # validation accuracy every so many steps (0: only at the end)
    return cfg
