"""The bench's shared pieces: one set of random weights on both sides (common.twin), and the down_proj hooks (mask by
mask and per row) editing transformers' model as our interventions edit ours. (The tiny Audio Flamingo 3 twin is
checked by test_main's study_af3 run.)"""

import numpy as np
import pytest
import torch

import esn_jax
from experiments.bench import common, shapes

TINY = shapes.shape("tiny")


def test_the_twins_hooks_apply_our_scales_mask_by_mask_and_per_row():
    cfg = TINY.decoder
    module, params, hf = common.twin("qwen2", cfg)
    ids = common.random_ids(cfg.vocab_size, 3, 7)
    masks = np.random.default_rng(0).random((2, cfg.num_hidden_layers, cfg.intermediate_size)) < 0.5
    ours = np.asarray(esn_jax.score_variants(module, params, {"input_ids": ids}, esn_jax.ablate(masks, "mlp_in"),
                                             TINY.labels))  # [V, B, N]
    labels = [t[0] for t in TINY.labels]
    keep = torch.as_tensor(1.0 - masks, dtype=torch.float32)  # [V, L, I]

    def logp(rows):
        return torch.log_softmax(hf(input_ids=torch.as_tensor(rows, dtype=torch.long)).logits[:, -1], -1)[:, labels]

    with torch.inference_mode():
        unedited = logp(ids).numpy()
        with common.scaled_down_proj(hf) as current:
            by_mask = []
            for scale in keep:
                current[0] = scale
                by_mask.append(logp(ids).numpy())
            current[0] = keep.transpose(0, 1).repeat_interleave(len(ids), 1)[:, :, None]  # [L, V * B, 1, I]
            per_row = logp(np.tile(ids, (2, 1))).numpy().reshape(ours.shape)
        after = logp(ids).numpy()
    assert np.abs(ours - unedited).max() > 1e-3  # half the neurons ablated: the edit shows
    np.testing.assert_allclose(np.stack(by_mask), ours, atol=1e-5)
    np.testing.assert_allclose(per_row, ours, atol=1e-5)
    np.testing.assert_array_equal(after, unedited)  # the hooks are gone
    with torch.inference_mode(), common.scaled_down_proj(hf, keep[1]):
        np.testing.assert_allclose(logp(ids).numpy(), ours[1], atol=1e-5)
    with pytest.raises(AssertionError), common.scaled_down_proj(hf, keep[1, :1]):
        pass  # one layer's scale for a two-layer model
