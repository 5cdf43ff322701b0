"""Equal work: C clips × V ablation masks of label scoring on a random Qwen2 decoder of the bench's shape and dtype.

* ours: ``esn_jax.score_variants`` (masks vmapped ``chunk_size`` at a time, logits at the answer position);
* theirs, mask by mask: transformers' ``Qwen2ForCausalLM`` with the same weights (:func:`common.twin`) and a
  forward pre-hook on every layer's ``down_proj`` scaling its input, one forward per mask, ``logits_to_keep=1``;
* theirs, batched: the same, ``torch_batch`` masks per forward: the C clips repeated once per mask, each row's own
  scale in the hook ([L, rows, 1, I]).

All do the same FLOPs (the prompts are random: no prefix to share); the predictions are checked to agree. Shapes:
V = masks, C = clips, T = tokens, N = labels, L = layers, I = neurons.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import esn_jax
from experiments.bench import common
from experiments.bench.shapes import Shape
from experiments.bench.table import Row


def run(shape: Shape, dtype: str, clips: int, variants: int, length: int, chunk_size: int, torch_batch: int,
        repeats: int) -> dict:
    """Seconds of ours and both hook loops, FLOPs, and the agreement of each loop's predictions with ours."""
    import torch

    cfg = shape.decoder
    module, params, hf = common.twin("qwen2", cfg, dtype)
    ids = common.random_ids(cfg.vocab_size, clips, length)
    masks = np.random.default_rng(2).random((variants, cfg.num_hidden_layers, cfg.intermediate_size)) < 0.01
    batch, edits = {"input_ids": jnp.asarray(ids)}, esn_jax.ablate(masks, site="mlp_in")

    def ours():
        return esn_jax.score_variants(module, params, batch, edits, shape.labels, chunk_size).block_until_ready()

    device = hf.device
    keep = torch.as_tensor(1.0 - masks, dtype=hf.dtype, device=device)  # [V, L, I]
    ids_t = torch.as_tensor(ids, dtype=torch.long, device=device)
    label_ids = torch.as_tensor([t[0] for t in shape.labels], device=device)
    m = min(torch_batch, variants)
    groups = [(keep[s:s + m].transpose(0, 1).repeat_interleave(clips, 1)[:, :, None],  # [L, k * C, 1, I]
               ids_t.repeat(len(keep[s:s + m]), 1)) for s in range(0, variants, m)]  # row j * C + c: mask j, clip c

    def label_logp(logits):  # [rows, 1, vocab] -> [rows, N]
        return torch.log_softmax(logits[:, -1].float(), -1)[:, label_ids]

    def by_mask(current):
        out = []
        for scale in keep:
            current[0] = scale
            out.append(label_logp(hf(input_ids=ids_t, logits_to_keep=1).logits))
        out = torch.stack(out)
        common.sync()
        return out

    def batched(current):
        out = []
        for scale, rows in groups:
            current[0] = scale
            out.append(label_logp(hf(input_ids=rows, logits_to_keep=1).logits).reshape(-1, clips, len(label_ids)))
        out = torch.cat(out)
        common.sync()
        return out

    got = np.asarray(ours())
    with torch.inference_mode(), common.scaled_down_proj(hf) as current:
        agree, diff = common.agreement(got, by_mask(current).cpu())
        agree_batched, diff_batched = common.agreement(got, batched(current).cpu())
        by_mask_s = common.best_time(lambda: by_mask(current), repeats)
        batched_s = common.best_time(lambda: batched(current), repeats)
    return {"ours_s": common.best_time(ours, repeats), "theirs_s": by_mask_s, "batched_s": batched_s,
            "flops": variants * common.forward_flops(cfg, clips, length), "clips": clips, "variants": variants,
            "length": length, "chunk_size": chunk_size, "torch_batch": m, "shape": shape.name, "dtype": dtype,
            "prediction_agreement": agree, "max_logp_diff": diff, "prediction_agreement_batched": agree_batched,
            "max_logp_diff_batched": diff_batched}


def describe(r: dict, peak: float) -> list[str]:
    """The printed lines; ``peak``: the GEMM peak (FLOP/s) measured in the same run."""
    flops = r["flops"]

    def side(seconds):
        return _side(r, seconds, peak)

    return [
        f"equal work, {r['shape']} shape, {r['dtype']}, N={r['clips']} clips × V={r['variants']} masks × "
        f"T={r['length']} tokens ({flops / 1e12:.2f} TFLOP):",
        f"  ours (jit + vmap, chunk {r['chunk_size']}): {side(r['ours_s'])}",
        f"  transformers + hooks, mask by mask: {side(r['theirs_s'])}",
        f"  transformers + hooks, {r['torch_batch']} masks per call (per-row scales): {side(r['batched_s'])}",
        f"  prediction agreement: {r['prediction_agreement']:.3f} mask by mask (max |dlogp| "
        f"{r['max_logp_diff']:.1e}), {r['prediction_agreement_batched']:.3f} batched (max |dlogp| "
        f"{r['max_logp_diff_batched']:.1e})",
    ]


def _side(r: dict, seconds: float, peak: float) -> str:
    flops = r["flops"]
    return f"{seconds:.3f} s, {common.rate(flops / seconds)}, {flops / seconds / peak:.2f} of the GEMM peak"


def rows(r: dict, peak: float) -> list[Row]:
    what = (f"equal work, {r['shape']} shape, {r['dtype']}, {r['clips']} clips × {r['variants']} masks × {r['length']} "
            f"tokens ({r['flops'] / 1e12:.2f} TFLOP), random weights")
    ours = _side(r, r["ours_s"], peak)
    return [Row(what, ours, "naive: transformers + down_proj hooks, mask by mask", _side(r, r["theirs_s"], peak),
                "ratio_equal_work"),
            Row(what, ours, f"careful: transformers + hooks, {r['torch_batch']} masks per call (per-row scales)",
                _side(r, r["batched_s"], peak), "ratio_equal_work_batched"),
            Row("equal work against the GEMM peak", common.rate(r["flops"] / r["ours_s"]),
                "none: the best GEMM of the same run", common.rate(peak), "peak_fraction")]
