"""The study stage on Audio Flamingo 3 at the bench's shape and dtype, random weights: C clips of one 30-s window
each (the shape's window: 3000 mel frames at 7B), V ablation masks, four single-token labels.

Each clip's prompt: two text tokens, the window's audio placeholders, the other text tokens (random, no prefix the
clips share). The weights are the same on both sides (:func:`common.twin`).

* ours: ``esn_jax.score_variants``: the encoder once per clip, masks vmapped ``chunk_size`` at a time;
* theirs (a), full model per mask: transformers' ``AudioFlamingo3ForConditionalGeneration`` with down_proj pre-hooks,
  one forward per mask, encoder included, ``logits_to_keep=1``;
* theirs (b), encoder once: ``get_audio_features`` once, its output written over the placeholders' embeddings, then
  one ``inputs_embeds`` forward per mask.

Shapes: V = masks, C = clips, T = tokens per clip, N = labels, M = mel bins, F = frames per window.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import esn_jax
from experiments.bench import common
from experiments.bench.shapes import Shape
from experiments.bench.table import Row
from ports.audio import output_lengths


def clips_batch(shape: Shape, clips: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Our raw forward kwargs: input_ids, attention_mask [C, T], input_features [C, M, F], input_features_mask [C, F]
    (every frame real)."""
    cfg = shape.af3
    frames = cfg.audio.window_frames
    audio = int(output_lengths(frames))
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, cfg.audio_token_id, (clips, audio + shape.text_tokens)).astype(np.int32)
    ids[:, 2:2 + audio] = cfg.audio_token_id
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "input_features": rng.standard_normal((clips, cfg.audio.num_mel_bins, frames), np.float32),
            "input_features_mask": np.ones((clips, frames), np.int32)}


def run(shape: Shape, dtype: str, clips: int, variants: int, chunk_size: int, repeats: int) -> dict:
    """Seconds of ours and of both hook loops, and the agreement of each loop's predictions with ours."""
    import torch

    cfg = shape.af3
    module, params, hf = common.twin("audio_flamingo3", cfg, dtype)
    inputs = clips_batch(shape, clips)
    masks = np.random.default_rng(2).random((variants, cfg.text.num_hidden_layers, cfg.text.intermediate_size)) < 0.01
    batch, edits = {k: jnp.asarray(v) for k, v in inputs.items()}, esn_jax.ablate(masks, site="mlp_in")

    def ours():
        return esn_jax.score_variants(module, params, batch, edits, shape.labels, chunk_size).block_until_ready()

    device = hf.device
    keep = torch.as_tensor(1.0 - masks, dtype=hf.dtype, device=device)  # [V, L, I]
    t = {k: torch.as_tensor(v, device=device) for k, v in inputs.items()}
    t["input_ids"], t["input_features"] = t["input_ids"].long(), t["input_features"].to(hf.dtype)
    label_ids = torch.as_tensor([ids[0] for ids in shape.labels], device=device)

    def per_mask(current, **kwargs):
        out = []
        for scale in keep:
            current[0] = scale
            logits = hf(attention_mask=t["attention_mask"], logits_to_keep=1, **kwargs).logits
            out.append(torch.log_softmax(logits[:, -1].float(), -1)[:, label_ids])
        out = torch.stack(out)
        common.sync()
        return out

    def full(current):
        return per_mask(current, input_ids=t["input_ids"], input_features=t["input_features"],
                        input_features_mask=t["input_features_mask"])

    def encoder_once(current):
        embeds = common.audio_in_embeds(hf, t["input_ids"], t["input_features"], t["input_features_mask"])
        return per_mask(current, inputs_embeds=embeds)

    got = np.asarray(ours())
    with torch.inference_mode(), common.scaled_down_proj(hf) as current:
        agree, diff = common.agreement(got, full(current).cpu())
        agree_once, diff_once = common.agreement(got, encoder_once(current).cpu())
        full_s = common.best_time(lambda: full(current), repeats)
        once_s = common.best_time(lambda: encoder_once(current), repeats)
    return {"ours_s": common.best_time(ours, repeats), "theirs_s": full_s, "encoder_once_s": once_s,
            "clips": clips, "variants": variants, "tokens": inputs["input_ids"].shape[1],
            "frames": cfg.audio.window_frames, "chunk_size": chunk_size, "shape": shape.name, "dtype": dtype,
            "prediction_agreement": agree, "max_logp_diff": diff, "prediction_agreement_encoder_once": agree_once,
            "max_logp_diff_encoder_once": diff_once}


def describe(r: dict) -> list[str]:
    return [
        f"study stage, Audio Flamingo 3 ({r['shape']} shape, random weights), {r['dtype']}, {r['clips']} clips of one "
        f"{r['frames']}-frame window × {r['variants']} ablation masks, {r['tokens']} tokens per clip:",
        f"  ours (encoder once per clip, {r['chunk_size']} masks per vmapped step): {r['ours_s']:.3f} s",
        f"  transformers + hooks, full model per mask (encoder every time): {r['theirs_s']:.3f} s",
        f"  transformers + hooks, encoder once, inputs_embeds per mask: {r['encoder_once_s']:.3f} s",
        f"  prediction agreement: {r['prediction_agreement']:.3f} full model (max |dlogp| {r['max_logp_diff']:.1e}), "
        f"{r['prediction_agreement_encoder_once']:.3f} encoder once (max |dlogp| "
        f"{r['max_logp_diff_encoder_once']:.1e})",
    ]


def rows(r: dict) -> list[Row]:
    what = (f"study stage, Audio Flamingo 3, {r['shape']} shape, {r['dtype']}, {r['clips']} clips × {r['variants']} "
            "ablation masks, random weights")
    ours = f"{r['ours_s']:.3f} s"
    return [Row(what, ours, "naive: transformers + hooks, full model per mask", f"{r['theirs_s']:.3f} s",
                "ratio_study_af3"),
            Row(what, ours, "careful: transformers + hooks, encoder once, inputs_embeds per mask",
                f"{r['encoder_once_s']:.3f} s", "ratio_study_af3_encoder_once")]
