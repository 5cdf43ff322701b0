r"""Generation under interventions (``generate``): ``esn_jax.generate`` against transformers' ``generate`` with
down_proj hooks, on the mini-LALM (:func:`experiments.bench.study_mini.mini_lalm_clips` builds it and its Hugging
Face export; tests pass a tiny random Audio Flamingo 3):

* ours: ONE call of ``esn_jax.generate`` for V stacked gain interventions on B clips: the encoder runs once per
  clip, the interventions are vmapped (``chunk_size`` at a time), greedy, a key/value cache, no stop token, so
  every row writes all N tokens;
* theirs, naive: ``AudioFlamingo3ForConditionalGeneration.generate(do_sample=False, max_new_tokens=N)`` once per
  intervention (its key/value cache on, as its users run it), the B clips batched with left padding, a
  ``forward_pre_hook`` on every layer's ``mlp.down_proj`` multiplying its input by the intervention's scale
  (equal to our ``gate_act`` scale: see :mod:`ports.sites`); the audio encoder runs in every call;
* theirs, careful: the same hooks and ``generate``, but the encoder once per clip for all V interventions
  (:func:`common.audio_in_embeds`) and ``generate(inputs_embeds=..., attention_mask=...)`` per intervention.

All three must write the same ids token for token (:func:`check_identical` raises where they differ). Times are the
best of ``repeats`` after a warm-up call; our compile time is reported apart (the warm-up minus the best).

Shapes: V = interventions, B = clips, N = new tokens, L = layers, I = neurons.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

import esn_jax
from experiments.bench import common
from experiments.bench.table import Row

SITE = "gate_act"  # enters down_proj linearly: a scale here is a pre-hook scaling down_proj's input


def gain_masks(layers: int, neurons: int, variants: int, fraction: float = 0.01, alpha: float = 4.0,
               seed: int = 4) -> tuple[dict, np.ndarray]:
    """V random masks of ``fraction`` of the neurons under gain α -> (our stacked edits, scales [V, L, I])."""
    masks = np.random.default_rng(seed).random((variants, layers, neurons)) < fraction
    edits = esn_jax.gain(masks, alpha, SITE)
    return edits, np.array(edits[SITE]["scale"])  # writable: torch.as_tensor warns on read-only arrays


def check_identical(ours: np.ndarray, theirs: np.ndarray) -> int:
    """Raises AssertionError naming the first differing positions unless ids [V, B, N] agree -> tokens compared."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.shape != theirs.shape:
        raise AssertionError(f"generated ids differ in shape: ours {ours.shape}, theirs {theirs.shape} [V, B, N]")
    where = np.argwhere(ours != theirs)
    if where.size:
        first = ", ".join(f"(variant {v}, clip {b}, token {n}): ours {ours[v, b, n]} theirs {theirs[v, b, n]}"
                          for v, b, n in where[:5])
        raise AssertionError(f"generated ids differ at {len(where)} of {ours.size} positions; first {first}")
    return ours.size


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """-> (first call's seconds, best of ``repeats`` more, the last result)."""
    start = time.perf_counter()
    out = fn()
    first, best = time.perf_counter() - start, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return first, best, out


def compare(module, params, hf, inputs: Mapping[str, Any], prompt: Mapping[str, Any], *, variants: int, tokens: int,
            repeats: int, chunk_size: int | None = None, fraction: float = 0.01, alpha: float = 4.0) -> dict:
    """Times V interventions × B clips × N greedy tokens, ours and theirs, and checks their ids are identical.

    inputs: our raw forward kwargs (left-padded); prompt: the same clips as transformers' AF3 takes them (torch
    tensors: input_ids, attention_mask, whole-window input_features and input_features_mask; position_ids, if
    given, are dropped: ``generate`` derives them from the mask). torch runs on as many threads as XLA's CPU
    client (the CPUs this process may use), restored on return.
    """
    import torch

    text = module.config.text
    edits, scales = gain_masks(text.num_hidden_layers, text.intermediate_size, variants, fraction, alpha)
    prompt = {k: v for k, v in prompt.items() if k != "position_ids"}
    width = prompt["input_ids"].shape[1]
    scales = torch.as_tensor(scales, device=hf.device)

    def ours(n=tokens):
        ids, _ = esn_jax.generate(module, params, inputs, n, edits, chunk_size=chunk_size)
        return np.asarray(ids)

    def theirs(current, n=tokens):
        out = []
        for scale in scales:
            current[0] = scale
            out.append(hf.generate(**prompt, do_sample=False, max_new_tokens=n)[:, width:].cpu().numpy())
        return np.stack(out)

    def careful(current, n=tokens):
        embeds = common.audio_in_embeds(hf, prompt["input_ids"], prompt["input_features"],
                                        prompt["input_features_mask"])
        out = []
        for scale in scales:
            current[0] = scale
            ids = hf.generate(inputs_embeds=embeds, attention_mask=prompt["attention_mask"], do_sample=False,
                              max_new_tokens=n)
            out.append(ids[:, -n:].cpu().numpy())  # given embeddings only, generate returns the new ids alone
        return np.stack(out)

    threads, saved = len(os.sched_getaffinity(0)), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        first, ours_s, got = timed(ours, repeats)
        _, ours_prefill_s, _ = timed(lambda: ours(1), repeats)
        with torch.inference_mode(), common.scaled_down_proj(hf) as current:
            _, theirs_s, want = timed(lambda: theirs(current), repeats)
            _, theirs_prefill_s, _ = timed(lambda: theirs(current, 1), repeats)
            _, careful_s, want_careful = timed(lambda: careful(current), repeats)
            _, encoder_s, _ = timed(lambda: (hf.get_audio_features(prompt["input_features"],
                                                                   prompt["input_features_mask"]), common.sync()),
                                    repeats)
    finally:
        torch.set_num_threads(saved)
    return {"ours_s": ours_s, "theirs_s": theirs_s, "compile_s": first - ours_s, "ours_prefill_s": ours_prefill_s,
            "theirs_prefill_s": theirs_prefill_s, "their_encoder_s": encoder_s, "identical": check_identical(got, want),
            "careful_s": careful_s, "identical_careful": check_identical(got, want_careful),
            "variants": variants, "clips": got.shape[1], "tokens": tokens, "fraction": fraction, "alpha": alpha,
            "chunk_size": chunk_size or variants, "threads": threads, "width": width,
            "distinct": sum(len({tuple(row) for row in got[:, b]}) for b in range(got.shape[1])), "ids": got}


def describe(result: Mapping[str, Any]) -> list[str]:
    """The comparison's printed lines."""
    r, steps = result, result["tokens"] - 1
    return [
        f"generate, mini-LALM, {r['clips']} clips × {r['variants']} interventions (gain ×{1 + r['alpha']:g} on random "
        f"{r['fraction']:.0%} of the neurons) × {r['tokens']} new tokens, greedy, float32, {r['threads']} threads "
        "(torch and XLA):",
        f"  ours (one esn_jax.generate call, {r['chunk_size']} interventions per vmapped chunk, encoder once per clip, "
        f"KV cache): {r['ours_s']:.3f} s; compile {r['compile_s']:.1f} s (first call minus the best), not in the time",
        f"  transformers generate + hooks per intervention, encoder every call: {r['theirs_s']:.3f} s "
        f"(encoder {r['their_encoder_s']:.3f} s per batch, whole 30-s windows)",
        f"  transformers generate + hooks per intervention, encoder once, inputs_embeds: {r['careful_s']:.3f} s",
        f"  prefill only (1 new token): ours={r['ours_prefill_s']:.3f}s theirs={r['theirs_prefill_s']:.3f}s; "
        f"the {steps} steps after it: ours={r['ours_s'] - r['ours_prefill_s']:.3f}s "
        f"theirs={r['theirs_s'] - r['theirs_prefill_s']:.3f}s",
        f"  ids identical: all {r['identical']} tokens ({r['variants']} × {r['clips']} × {r['tokens']}), both "
        f"transformers sides; {r['distinct']} of the {r['variants'] * r['clips']} (intervention, clip) sequences "
        "differ within their clip",
    ]


def rows(r: Mapping[str, Any]) -> list[Row]:
    what = (f"generation, the mini-LALM, {r['variants']} interventions × {r['clips']} clips × {r['tokens']} greedy "
            "tokens, float32, ids identical")
    ours = f"{r['ours_s']:.3f} s"
    return [Row(what, ours, "naive: transformers generate + hooks per intervention, encoder every call",
                f"{r['theirs_s']:.3f} s", "ratio_generate"),
            Row(what, ours, "careful: the same, encoder once per clip, generate(inputs_embeds=…)",
                f"{r['careful_s']:.3f} s", "ratio_generate_careful")]
