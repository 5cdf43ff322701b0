"""The bench's generation comparison (experiments.bench.generate), on a tiny random Audio Flamingo 3."""

import numpy as np
import pytest
import torch

from experiments.bench import generate
from tests.ports.test_audio_flamingo3 import TEXT, convert_random, processor_counts, prompts, windows


def test_the_comparison_runs_every_side_and_finds_their_ids_identical(tmp_path):
    hf, module, params = convert_random(tmp_path, TEXT)
    hf.eval()
    clip_frames = [20, 13]  # one window each, the second clip shorter: its prompt is left-padded
    feats, fmask, _ = windows(clip_frames)
    ids, mask = prompts(processor_counts(clip_frames))
    assert not mask.all()
    inputs = {"input_ids": ids, "attention_mask": mask, "input_features": feats, "input_features_mask": fmask}
    prompt = {"input_ids": torch.as_tensor(ids, dtype=torch.long), "attention_mask": torch.as_tensor(mask),
              "input_features": torch.as_tensor(feats), "input_features_mask": torch.as_tensor(fmask)}
    # Half the neurons at gain ×5, so that the interventions change what is written: theirs can only match
    # ours if its hooks scaled down_proj's input.
    result = generate.compare(module, params, hf, inputs, prompt, variants=2, tokens=3, repeats=1, fraction=0.5,
                              alpha=4.0)
    assert result["ids"].shape == (2, 2, 3)
    assert result["identical"] == result["identical_careful"] == 2 * 2 * 3
    assert result["distinct"] > 2
    assert result["ours_s"] > 0 and result["theirs_s"] > 0 and result["careful_s"] > 0
    assert not any(layer.mlp.down_proj._forward_pre_hooks for layer in hf.model.language_model.layers)
    lines = generate.describe(result)
    assert lines[1].startswith("  ours (") and lines[3].endswith(f"inputs_embeds: {result['careful_s']:.3f} s")


def test_differing_ids_raise_naming_where():
    ours = np.zeros((2, 2, 3), np.int32)
    theirs = ours.copy()
    theirs[1, 0, 2] = 7
    with pytest.raises(AssertionError, match=r"at 1 of 12 positions; first \(variant 1, clip 0, token 2\): ours 0 "
                                             r"theirs 7"):
        generate.check_identical(ours, theirs)
    with pytest.raises(AssertionError, match="shape"):
        generate.check_identical(ours, theirs[..., :2])
    assert generate.check_identical(ours, ours.copy()) == 12
