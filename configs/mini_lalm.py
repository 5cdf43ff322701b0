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
    # large: 18 training voices (3 validation, 3 test, all unseen in training)
    cfg.dataset = "synthetic_prosody/tiny" if tiny else "synthetic_prosody/large"
    cfg.labels = ("neutral", "happy", "sad", "angry")  # esn_jax.data.FOUR order: the "four" view's label index
    # Questions: each training row draws one from esn_jax.reference.wordings' pool; reference.json's question (the
    # study's "asked" prompt) is that pool's first wording.
    cfg.system = None  # None: SmolLM2's own default system prompt (mini_lalm.SYSTEM)
    cfg.batch_size = 8 if tiny else 16
    cfg.eval_batch_size = 8 if tiny else 16
    # Audio tokens per training row are padded up to one of these clip lengths (seconds, 25 tokens/s): one
    # compiled shape each, little padding. Longer clips are truncated to the last.
    cfg.buckets = (3.0,) if tiny else (2.0, 3.0)
    cfg.steps = 4 if tiny else 260  # as many as `python -m experiments.train_reference` runs in 30 min on 2 cores
    cfg.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=2 if tiny else 20, weight_decay=0.0, b1=0.9, b2=0.98, clip_norm=1.0))
    cfg.log_every = 2 if tiny else 20
    cfg.eval_every = 0 if tiny else 50  # validation accuracy every so many steps (0: only at the end)
    # validation clips those and the last use (stratified; 0: all); the test split is scored whole at the end
    cfg.eval_items = 0 if tiny else 160
    return cfg
