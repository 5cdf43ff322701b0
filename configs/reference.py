"""The reference model's training configuration (``python -m experiments.train_reference``).

``--config=configs/reference.py`` (the shipped model) or ``--config=configs/reference.py:tiny`` (a few
steps of a smaller model on the ``tiny`` corpus: tests and a first look).

The model is Qwen2.5-Omni's thinker architecture (audio tower + decoder, :mod:`ports.qwen2_5_omni`) at toy
size; the vocabulary size and the special-token ids come from the script's own tokenizer, so they are not
set here.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: ``default`` or ``tiny``."""
    if arg not in (None, "default", "tiny"):
        raise ValueError(f"unknown config variant {arg!r}; expected 'default' or 'tiny'")
    tiny = arg == "tiny"
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.dataset = "synthetic_prosody/tiny" if tiny else "synthetic_prosody/small"
    cfg.labels = ("neutral", "happy", "sad", "angry")  # esn_jax.data.FOUR order: the "four" view's label index
    cfg.question = "What emotion does the speaker express? Answer with one word: neutral, happy, sad or angry."
    cfg.system = None  # None: the long Qwen2.5-Omni prompt the toy has always used (ports.prompts.OMNI_VOICE_SYSTEM)
    cfg.text = ml_collections.ConfigDict(dict(
        hidden_size=32 if tiny else 64, intermediate_size=64 if tiny else 256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=False))
    # Whisper-style chunked encoder as Omni's: 128 mels (the features' default), 200-frame chunks.
    cfg.audio = ml_collections.ConfigDict(dict(
        num_mel_bins=128, d_model=32 if tiny else 64, encoder_layers=1 if tiny else 2, encoder_attention_heads=4,
        encoder_ffn_dim=64 if tiny else 256, max_source_positions=1500, chunk_frames=200))
    cfg.batch_size = 8 if tiny else 16
    cfg.eval_batch_size = 8 if tiny else 32
    # The pipeline's length buckets, one compiled shape each; tiny's clips (< 3 s) share one (less compiling).
    cfg.buckets = (4.0,) if tiny else (2.0, 4.0, 8.0, 16.0, 30.0)
    cfg.steps = 6 if tiny else 800
    cfg.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=2e-3, warmup_steps=2 if tiny else 80, weight_decay=0.01, b1=0.9, b2=0.98,
        clip_norm=1.0))
    cfg.log_every = 2 if tiny else 100
    return cfg
