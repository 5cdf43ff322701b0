"""The study stage on the shipped reference model (``study``): the ablation + gain sweep of the study (every
emotion's mask ablated, and amplified at each α), float32.

Ours: the encoder once per clip, masks vmapped ``chunk_size`` at a time, the prompt prefix all clips share run once
per mask, logits at the answer position. Theirs: the same model exported to the Hugging Face thinker layout, run by
transformers' ``Qwen2_5OmniThinkerForConditionalGeneration`` with down_proj pre-hooks, mask by mask, encoder
included, full logits, as a PyTorch user would write it. The savings are reported one by one.

Shapes: V = masks, E = emotions, B = clips, L = layers, I = neurons.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import esn_jax
import ports
from esn_jax import prefix, scoring
from experiments.bench import common
from experiments.bench.table import Row


def study_masks(text: ports.DecoderConfig, emotions: int, alphas, variants: int | None = None):
    """The study stage's masks: each emotion's random 2 % of the neurons ablated, then under each gain α, the
    first ``variants`` of them (default all): (edits {"mlp_in": {"scale": [V, L, I]}}, scales [V, L, I])."""
    masks = np.random.default_rng(3).random((emotions, text.num_hidden_layers, text.intermediate_size)) < 0.02
    edits = [esn_jax.ablate(masks, "mlp_in")] + [esn_jax.gain(masks, a, "mlp_in") for a in alphas]
    stacked = jax.tree.map(lambda *x: jnp.concatenate(x)[:variants], *edits)
    return stacked, np.array(stacked["mlp_in"]["scale"])  # writable: torch.as_tensor warns on read-only arrays


def our_sweep(module, params, inputs: dict, edits, labels, chunk_size: int):
    """Our side of a study-stage comparison: (ours(share_prefix) -> label log-probs [V, B, E], encoder_only(),
    prompt columns all rows share, prompt width)."""

    def ours(share_prefix=True):
        return esn_jax.score_variants(module, params, inputs, edits, labels, chunk_size,
                                      share_prefix).block_until_ready()

    embedded = scoring.embed_jitted(module, params, inputs)
    embed = jax.jit(lambda p, kw: scoring.embed(module, p, kw))
    raw = {k: v for k, v in inputs.items() if k != "attention_mask"}

    def encoder_only():
        return jax.block_until_ready(embed(params, raw))

    return ours, encoder_only, prefix.shared_length(embedded), inputs["input_ids"].shape[1]


def run(chunk_size: int, repeats: int, alphas=(0.5, 1.0, 2.0, 4.0, 8.0), clips: int = 8) -> dict:
    """Seconds for the study's ablation + gain sweep on the reference model: ours and the hook loop."""
    import tensorflow_datasets as tfds
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from esn_jax import reference
    from esn_jax.data import BUILDERS, pipeline

    module, params, tokenizer, meta = reference.load_reference()
    with tempfile.TemporaryDirectory() as tmp:
        BUILDERS["synthetic_prosody"](data_dir=tmp, config="tiny").download_and_prepare(
            download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
        examples = pipeline.read("synthetic_prosody/tiny", "train", tmp, view="four")
        batch = next(iter(pipeline.Batches(examples, pipeline.PipelineConfig(batch_size=clips, view="four"))))
        inputs = reference.model_batch(tokenizer, meta, batch.features)
        ports.export("qwen2_5_omni", module.config, params, Path(tmp) / "hf")
        hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(Path(tmp) / "hf", dtype=torch.float32)
    hf = hf.to(common.torch_device()).eval()
    text = module.config.text
    stacked, scales = study_masks(text, len(meta["labels"]), alphas)
    labels = meta["label_token_ids"]
    ours, encoder_only, shared, width = our_sweep(module, params, inputs, stacked, labels, chunk_size)
    torch_inputs = {k: torch.as_tensor(v, dtype=torch.long if k == "input_ids" else None, device=hf.device)
                    for k, v in inputs.items()}
    scales = torch.as_tensor(scales, device=hf.device)
    label_ids = [t[0] for t in labels]

    def theirs(current):
        out = []
        for scale in scales:
            current[0] = scale
            logits = hf(**torch_inputs).logits[:, -1]
            out.append(torch.log_softmax(logits, -1)[:, label_ids])
        out = torch.stack(out)
        common.sync()
        return out

    with torch.inference_mode(), common.scaled_down_proj(hf) as current:
        agree, _ = common.agreement(ours(), theirs(current).cpu())
        t_theirs = common.best_time(lambda: theirs(current), repeats)
    return {"ours_s": common.best_time(ours, repeats), "theirs_s": t_theirs, "variants": len(scales),
            "clips": clips, "unshared_s": common.best_time(lambda: ours(share_prefix=False), repeats),
            "shared_tokens": shared, "width": width, "valid_tokens": int(inputs["attention_mask"].sum()),
            "vocab": text.vocab_size, "encoder_once_s": common.best_time(encoder_only, repeats),
            "prediction_agreement": agree, "chunk_size": chunk_size}


def encoder_and_prefix_savings(r: dict) -> list[str]:
    """The savings lines a study-stage comparison shares: the encoder run once, the shared prompt prefix."""
    shared, clips = r["shared_tokens"], r["clips"]
    return [f"    encoder: {r['encoder_once_s']:.3f} s per batch, run once by ours and {r['variants']} times by the "
            "loop",
            f"    shared prompt prefix: {shared} of {r['width']} columns; decoder tokens per mask {r['valid_tokens']} "
            f"-> {r['valid_tokens'] - (clips - 1) * shared}; ours without sharing {r['unshared_s']:.3f} s "
            f"({r['unshared_s'] / r['ours_s']:.2f}x)"]


def describe(r: dict) -> list[str]:
    return [
        f"study stage, reference model, {r['clips']} clips × {r['variants']} masks (ablation + gain):",
        f"  ours (encoder once per clip, {r['chunk_size']} masks per vmapped step, shared prefix once per mask, "
        f"answer-position logits): {r['ours_s']:.3f} s",
        f"  transformers + hooks, mask by mask, encoder every time, full logits: {r['theirs_s']:.3f} s",
        "  savings, one by one:",
        *encoder_and_prefix_savings(r),
        f"    answer-position logits: the head runs on 1 of {r['width']} positions per row "
        f"(vocabulary {r['vocab']}, so little here; 151,936 for Qwen2.5-Omni)",
        f"  prediction agreement: {r['prediction_agreement']:.3f}",
    ]


def rows(r: dict) -> list[Row]:
    return [Row(f"study stage, reference model, {r['clips']} clips × {r['variants']} masks (ablation + gain)",
                f"{r['ours_s']:.3f} s", "naive: transformers + hooks, mask by mask, encoder every time, full logits",
                f"{r['theirs_s']:.3f} s", "ratio_study")]
