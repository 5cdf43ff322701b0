"""The study's configuration. ``--config=configs/study.py`` or ``--config=configs/study.py:local``.

For now the study is the backbone's end-to-end run (random tiny Qwen2 -> HF layout -> convert -> load
-> capture -> intervene); the full ESN study replaces it as the method and data land.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: ``default`` or ``local`` (smaller, for tests and a first look)."""
    if arg not in (None, "default", "local"):
        raise ValueError(f"unknown config variant {arg!r}; expected 'default' or 'local'")
    local = arg == "local"
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.model = "qwen2"
    cfg.decoder = ml_collections.ConfigDict(dict(
        vocab_size=256, hidden_size=32 if local else 64, intermediate_size=48 if local else 128,
        num_hidden_layers=2 if local else 4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8 if local else 16, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False))
    cfg.num_prompts = 8 if local else 32
    cfg.max_prompt_len = 12 if local else 48
    cfg.neurons_per_layer = 4 if local else 16  # ablated in the demonstration
    return cfg
