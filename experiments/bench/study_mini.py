"""The study stage on the mini-LALM (``study_mini``; esn_jax.reference.mini_lalm: Whisper tiny.en + projector +
SmolLM2-135M, as Audio Flamingo 3), float32: C clips × V ablation + gain masks.

Ours: ``esn_jax.score_variants``. Theirs: the model's Hugging Face export run by transformers'
``AudioFlamingo3ForConditionalGeneration`` with down_proj pre-hooks, mask by mask, encoder included, written as a
careful PyTorch user would: inference mode, logits at the answer position only, and the two-token labels
teacher-forced by continuing the prompt's KV cache; and the same loop with the encoder run once per clip
(``inputs_embeds`` per mask), the careful form.

Shapes: V = masks, C = clips, N = labels, W = windows, F = frames.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.bench import common, study
from experiments.bench.table import Row


def mini_lalm_clips(clips: int, mini_lalm_dir: str | None = None):
    """The mini-LALM on ``clips`` clips of the tiny synthetic corpus, ours and its Hugging Face export: (module,
    params, meta, inputs: our raw forward kwargs, left-padded, hf: transformers' AudioFlamingo3ForConditionalGeneration
    on the torch device, prompt: the same batch as transformers takes it, whole 30-s windows, on that device)."""
    import tensorflow_datasets as tfds
    import torch
    from transformers import AudioFlamingo3ForConditionalGeneration

    from esn_jax.data import BUILDERS, pipeline
    from esn_jax.reference import mini_lalm
    from ports import prompts

    module, params, tokenizer, meta = mini_lalm.load(mini_lalm_dir)
    with tempfile.TemporaryDirectory() as tmp:
        BUILDERS["synthetic_prosody"](data_dir=tmp, config="tiny").download_and_prepare(
            download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
        examples = pipeline.read("synthetic_prosody/tiny", "train", tmp, view="four")
        config = pipeline.PipelineConfig(model="audio_flamingo3", batch_size=clips, view="four", n_mels=80)
        features = dict(next(iter(pipeline.Batches(examples, config))).features)  # one 30-s window per clip
        hf = AudioFlamingo3ForConditionalGeneration.from_pretrained(
            mini_lalm.export_hf(module, params, tokenizer, Path(tmp) / "hf"), dtype=torch.float32)
    hf = hf.to(common.torch_device()).eval()
    del features["windows_per_clip"]
    texts = [mini_lalm.prompt(meta, int(n)) for n in features.pop("num_audio_tokens")]
    inputs = {**prompts.tokenize(tokenizer, texts), **features}
    mask = inputs["attention_mask"]
    frames, window = inputs["input_features"].shape[-1], module.config.audio.window_frames
    prompt = {"input_ids": np.asarray(inputs["input_ids"], np.int64), "attention_mask": mask,
              "position_ids": np.maximum(np.cumsum(mask, 1) - 1, 0),  # as ours: real tokens only
              # transformers' AF3 encoder takes whole 30-s windows: the pipeline's cut ones padded back, masked
              **{k: np.pad(inputs[k], [(0, 0)] * (inputs[k].ndim - 1) + [(0, window - frames)])
                 for k in ("input_features", "input_features_mask")}}
    return module, params, meta, inputs, hf, {k: torch.as_tensor(v, device=hf.device) for k, v in prompt.items()}


def run(clips: int, variants: int, chunk_size: int, repeats: int, mini_lalm_dir: str | None = None,
        alphas=(0.5, 1.0, 2.0, 4.0, 8.0)) -> dict:
    """Seconds for ``variants`` ablation + gain masks on ``clips`` clips of the mini-LALM: ours and the hook loop."""
    import torch

    module, params, meta, inputs, hf, prompt = mini_lalm_clips(clips, mini_lalm_dir)
    text = module.config.text
    stacked, scales = study.study_masks(text, len(meta["labels"]), alphas, variants)
    labels = meta["label_token_ids"]
    ours, encoder_only, shared, width = study.our_sweep(module, params, inputs, stacked, labels, chunk_size)
    mask = inputs["attention_mask"]
    frames, window = inputs["input_features"].shape[-1], module.config.audio.window_frames
    # The labels' tokens after their first, teacher-forced: one continuation row per multi-token label (right-
    # padded to the longest), after the prompt's cached keys and values.
    multi = [j for j, ids in enumerate(labels) if len(ids) > 1]
    longest = max(len(labels[j]) for j in multi)
    forced = np.zeros((clips * len(multi), longest - 1), np.int64)
    targets = np.zeros((len(multi), longest - 1), np.int64)
    valid = np.zeros((len(multi), longest - 1), bool)
    for k, j in enumerate(multi):
        n = len(labels[j]) - 1
        forced[k::len(multi), :n], targets[k, :n], valid[k, :n] = labels[j][:-1], labels[j][1:], True

    def dev(x):
        return torch.as_tensor(x, device=hf.device)

    cont_mask = dev(np.concatenate([np.repeat(mask, len(multi), 0), np.tile(valid, (clips, 1)).astype(mask.dtype)], 1))
    cont_pos = dev(np.repeat(mask.sum(1, keepdims=True), len(multi), 0) + np.arange(longest - 1))
    first, forced, scales = dev([ids[0] for ids in labels]), dev(forced), dev(scales)
    gather, keep = dev(np.tile(targets, (clips, 1)))[..., None], dev(np.tile(valid, (clips, 1)))

    def theirs(current, encoder_once=False):
        if encoder_once:
            embeds = common.audio_in_embeds(hf, prompt["input_ids"], prompt["input_features"],
                                            prompt["input_features_mask"])
            first_step = {"inputs_embeds": embeds, "attention_mask": prompt["attention_mask"],
                          "position_ids": prompt["position_ids"]}
        else:
            first_step = prompt
        out = []
        for scale in scales:
            current[0] = scale
            step = hf(**first_step, use_cache=True, logits_to_keep=1)
            logp = torch.log_softmax(step.logits[:, -1], -1)[:, first]  # [C, N]: every label's first token
            step.cache.batch_repeat_interleave(len(multi))
            cont = hf(input_ids=forced, attention_mask=cont_mask, position_ids=cont_pos, cache=step.cache)
            rest = torch.log_softmax(cont.logits, -1).gather(-1, gather)[..., 0].where(keep, 0.0).sum(-1)
            logp[:, multi] += rest.reshape(clips, len(multi))
            out.append(logp)
        out = torch.stack(out)
        common.sync()
        return out

    # Nothing to compile: every call is timed, the last one's result kept.
    with torch.inference_mode(), common.scaled_down_proj(hf) as current:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            want = theirs(current).cpu().numpy()
            times.append(time.perf_counter() - start)
        careful = common.agreement(want, theirs(current, encoder_once=True).cpu())
        once_s = common.best_time(lambda: theirs(current, encoder_once=True), repeats)
        start = time.perf_counter()
        hf.model.get_audio_features(prompt["input_features"], prompt["input_features_mask"])
        common.sync()
        their_encoder = time.perf_counter() - start
    agree, diff = common.agreement(ours(), want)
    per_token = text.num_hidden_layers * (text.hidden_size * text.head_dim * 2 * (text.num_attention_heads
                                                                                 + text.num_key_value_heads)
                                          + 3 * text.hidden_size * text.intermediate_size)
    head = text.hidden_size * text.vocab_size
    return {"ours_s": common.best_time(ours, repeats), "theirs_s": min(times), "variants": len(scales),
            "clips": clips, "unshared_s": common.best_time(lambda: ours(share_prefix=False), repeats),
            "shared_tokens": shared, "width": width, "valid_tokens": int(mask.sum()),
            "forced_tokens": sum(len(ids) - 1 for ids in labels), "head_fraction": head / (per_token + head),
            "encoder_once_s": common.best_time(encoder_only, repeats), "frames": frames, "window": window,
            "their_encoder_s": their_encoder, "prediction_agreement": agree, "max_logp_diff": diff,
            "torch_threads": torch.get_num_threads(), "chunk_size": chunk_size, "theirs_encoder_once_s": once_s,
            "careful_agreement": careful[0], "careful_max_logp_diff": careful[1]}


def describe(r: dict) -> list[str]:
    return [
        f"study stage, mini-LALM (Whisper tiny.en + projector + SmolLM2-135M), {r['clips']} clips × "
        f"{r['variants']} masks (ablation + gain), float32, torch threads {r['torch_threads']}:",
        f"  ours (encoder once per clip, {r['chunk_size']} masks per vmapped step, shared prefix once per mask, "
        f"answer-position logits, labels packed after the prompt): {r['ours_s']:.3f} s",
        f"  transformers + hooks, mask by mask, encoder every time, answer-position logits "
        f"(logits_to_keep=1), KV-cache continuation for the two-token labels: {r['theirs_s']:.3f} s",
        f"  the same loop with the encoder once, inputs_embeds per mask: {r['theirs_encoder_once_s']:.3f} s "
        f"(agreement with the loop {r['careful_agreement']:.3f}, max |dlogp| {r['careful_max_logp_diff']:.1e})",
        "  savings, one by one:",
        *study.encoder_and_prefix_savings(r),
        f"    encoder windows: ours cut after the bucket, {r['frames']} of {r['window']} mel frames "
        "(exact: AF3 masks the keys past a clip); transformers' AF3 takes whole windows, "
        f"{r['their_encoder_s']:.3f} s per batch",
        f"    answer-position logits: the head is {r['head_fraction']:.0%} of this LM's per-token cost; ours "
        f"runs it on 1 + {r['forced_tokens']} positions per row (the loop too: logits_to_keep; "
        "transformers' default would run it on all)",
        f"  prediction agreement: {r['prediction_agreement']:.3f} (max |dlogp| {r['max_logp_diff']:.1e})",
    ]


def rows(r: dict) -> list[Row]:
    what = f"study stage, the mini-LALM, {r['clips']} clips × {r['variants']} masks (ablation + gain), float32"
    ours = f"{r['ours_s']:.3f} s"
    return [Row(what, ours, "naive: transformers + hooks, mask by mask, encoder every time (answer-position logits, "
                "KV-cache label continuation)", f"{r['theirs_s']:.3f} s", "ratio_study_mini"),
            Row(what, ours, "careful: the same, encoder once per clip, inputs_embeds per mask",
                f"{r['theirs_encoder_once_s']:.3f} s", "ratio_study_mini_encoder_once")]
