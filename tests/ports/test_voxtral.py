"""Voxtral port vs transformers' VoxtralForConditionalGeneration (tiny, float32).

The tiny encoder's windows are 24 frames (max_source_positions=12) and its adapter stacks
intermediate_size / hidden_size = 4 frames: 3 audio tokens per window, as 375 are per 3000-frame window.
"""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AudioFlamingo3Config, Qwen2AudioConfig, VoxtralForConditionalGeneration
from transformers import VoxtralConfig as HFConfig

import ports
from ports.config import UnsupportedConfigError
from ports.voxtral import Voxtral, VoxtralConfig
from tests.ports import test_generate_parity
from tests.ports.hf_fixtures import randomize_
from tests.ports.lalm_helpers import (
    FIXTURES,
    export_round_trip,
    max_diff_to_transformers,
    our_logits,
    released_parameter_counts,
    text_fields_differ,
)
from tests.ports.test_convert import assert_nothing_written, copy_checkpoint

# tekken's ids: <s>, [INST], [/INST], <pad>, [AUDIO], [BEGIN_AUDIO]
BOS, INST, END_INST, PAD, AUDIO_ID, BEGIN_AUDIO = 1, 3, 4, 11, 24, 25
MEL, WINDOW, STACK = 16, 24, 4
PER_WINDOW = WINDOW // 2 // STACK
TEXT = dict(model_type="llama", vocab_size=160, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e8})
AUDIO = dict(num_mel_bins=MEL, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=STACK * 16, max_source_positions=WINDOW // 2)
TOL = 1e-4


def convert_random(root, text, seed=0):
    """A random transformers Voxtral with ``text`` as its text_config, saved and converted:
    (hf, module, params, its directory)."""
    torch.manual_seed(seed)
    hf = randomize_(VoxtralForConditionalGeneration(HFConfig(audio_config=AUDIO, text_config=text,
                                                             audio_token_id=AUDIO_ID)), seed)
    hf.save_pretrained(root / "hf")
    ports.convert(root / "hf", root / "ours", "voxtral")
    return (hf, *ports.load(root / "ours"), root / "hf")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_random(tmp_path_factory.mktemp("voxtral"), TEXT)


def windows(clip_windows, seed=0):
    """Random features [W, M, WINDOW] of every clip's windows in order (W = sum(clip_windows))."""
    return np.random.default_rng(seed).normal(size=(sum(clip_windows), MEL, WINDOW)).astype(np.float32)


def prompts(n_audio):
    """Left-padded instruct prompts ``<s>[INST][BEGIN_AUDIO][AUDIO]*n question[/INST]``, questions of 1, 2, 3 ...
    tokens: ids, attention_mask [B, T]."""
    rows = [[BOS, INST, BEGIN_AUDIO, *[AUDIO_ID] * n, *range(40, 41 + i), END_INST] for i, n in enumerate(n_audio)]
    t = max(map(len, rows))
    ids = np.array([[PAD] * (t - len(r)) + r for r in rows], np.int32)
    mask = np.array([[0] * (t - len(r)) + [1] * len(r) for r in rows], np.int32)
    return ids, mask


def batch(clip_windows, n_audio=None):
    """One clip of ``clip_windows[i]`` windows per prompt; ``n_audio``: the placeholders per prompt (default the
    windows' tokens)."""
    ids, mask = prompts([w * PER_WINDOW for w in clip_windows] if n_audio is None else n_audio)
    return {"input_ids": ids, "attention_mask": mask, "input_features": windows(clip_windows)}


@pytest.mark.parametrize("clip_windows", [[1, 2], [2, 1, 1]], ids=["W3-B2", "W4-B3"])
def test_logits_match_transformers(converted, clip_windows):
    """Clips of one and two windows in one batch of left-padded prompts. The placeholder count is what both
    models consume: transformers' audio embeddings (its adapter's rows) and our valid audio tokens."""
    hf, module, params, _ = converted
    inputs = batch(clip_windows)
    with torch.no_grad():
        theirs = hf.get_audio_features(torch.as_tensor(inputs["input_features"])).pooler_output.shape[0]
    _, valid = module.apply({"params": params}, jnp.asarray(inputs["input_features"]), method=Voxtral.audio_embeds)
    assert int((inputs["input_ids"] == AUDIO_ID).sum()) == theirs == int(np.asarray(valid).sum())
    assert module.config.tokens_per_window == PER_WINDOW
    diff = max_diff_to_transformers(hf, module, params, inputs)
    print(f"voxtral windows {clip_windows}: max |dlogits| = {diff:.2e}")
    assert diff <= TOL


def test_a_clip_of_several_windows_beside_a_text_only_prompt(converted):
    """W == B by chance (one two-window clip, one text-only prompt): the windows are not one per prompt, so only
    the total count may be checked; transformers takes this batch."""
    hf, module, params, _ = converted
    ids, mask = prompts([2 * PER_WINDOW, 0])
    inputs = {"input_ids": ids, "attention_mask": mask, "input_features": windows([2])}
    assert max_diff_to_transformers(hf, module, params, inputs) <= TOL


def test_tied_text_config_is_read_untied_as_transformers_builds_it(tmp_path):
    """text_config says tied, but transformers' Voxtral keeps its own lm_head (randomised apart here): the
    conversion must read it, not the embedding."""
    hf, module, params, hf_dir = convert_random(tmp_path, {**TEXT, "tie_word_embeddings": True}, seed=1)
    assert json.loads((hf_dir / "config.json").read_text())["text_config"]["tie_word_embeddings"]
    head, embed = hf.lm_head.weight.detach().numpy(), hf.model.language_model.embed_tokens.weight.detach().numpy()
    assert not np.array_equal(head, embed)
    assert not module.config.text.tie_word_embeddings
    np.testing.assert_array_equal(np.asarray(params["language_model"]["lm_head"]["kernel"]), head.T)
    assert max_diff_to_transformers(hf, module, params, batch([1, 2])) <= TOL


def test_a_placeholder_too_few_or_too_many_is_refused_with_both_counts(converted):
    _, module, params, _ = converted
    for n_audio in ([3, 5], [3, 7]):
        counts = re.escape(str(n_audio))
        with pytest.raises(ValueError, match=rf"\[AUDIO\] placeholders \({counts} per prompt\).*\(\[3, 3, 3\] per row"):
            our_logits(module, params, batch([1, 2], n_audio))


def test_cut_windows_are_refused(converted):
    """Voxtral masks no frame, so a window cut short would change every token of it."""
    _, module, params, _ = converted
    inputs = batch([1, 2])
    inputs["input_features"] = inputs["input_features"][..., :20]
    with pytest.raises(ValueError, match=r"input_features has shape \(3, 16, 20\); Voxtral takes \[W, 16, 24\]"):
        our_logits(module, params, inputs)


def test_config_round_trips_and_reads_the_saved_config(converted):
    _, module, _, hf_dir = converted
    config = module.config
    assert isinstance(module, Voxtral)
    assert VoxtralConfig.from_hf(json.loads((hf_dir / "config.json").read_text())) == config
    assert VoxtralConfig.from_hf(config.to_hf()) == config
    assert VoxtralConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (config.audio_token_id, config.audio.window_frames, config.audio.pool) == (AUDIO_ID, WINDOW, False)
    assert (config.frames_per_token, config.text.model_type, config.text.attention_bias) == (STACK, "llama", False)


@pytest.mark.parametrize("drop", [None, "rope_theta", "rms_norm_eps", "num_key_value_heads", "head_dim",
                                  "hidden_size"])
def test_released_text_config_reads_as_transformers_fills_it_or_is_refused(drop):
    """transformers fills what text_config leaves out (``drop``) with VoxtralConfig's own defaults (not Llama's:
    rope_theta 1e8, head_dim 128, 8 key/value heads, ...): a config read must give those, or be refused by name."""
    hf_cfg = json.loads((FIXTURES / "voxtral_mini_3b.config.json").read_text())
    hf_cfg["text_config"].pop(drop, None)
    try:
        ours = VoxtralConfig.from_hf(hf_cfg).text
    except UnsupportedConfigError as e:
        assert drop and drop in str(e)
        return
    assert text_fields_differ(ours, HFConfig(**hf_cfg).text_config) == {}


def audio_edit(**changes):
    return lambda c: c["audio_config"].update(changes)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(frobnicate=1), r"voxtral port: unknown attributes \['frobnicate'\]"),
    (lambda c: c.update(projector_hidden_act="silu"), "projector_hidden_act='silu' is not implemented"),
    (audio_edit(scale_embedding=True), "scale_embedding=True is not implemented"),
    (audio_edit(intermediate_size=40), r"intermediate_size / hidden_size = 40 / 16 .* must be a whole number"),
    (audio_edit(intermediate_size=80), r"intermediate_size / hidden_size = 80 / 16 .* dividing max_source_positions"),
    (audio_edit(num_key_value_heads=1), "num_key_value_heads=1 != num_attention_heads=2 is not implemented"),
    (audio_edit(model_type="whisper"), "audio_config model_type='whisper'"),
    (lambda c: c.update(model_type="llava"), r"model_type='llava'; --model=voxtral expects 'voxtral'"),
], ids=["unknown-attribute", "projector-act", "scale-embedding", "stack-not-whole", "stack-straddles-windows",
        "audio-kv-heads", "encoder-type", "model-type"])
def test_config_attributes_the_port_lacks_are_refused_by_name(converted, edit, message):
    *_, hf_dir = converted
    cfg = json.loads((hf_dir / "config.json").read_text())
    edit(cfg)
    with pytest.raises(UnsupportedConfigError, match=message):
        VoxtralConfig.from_hf(cfg)


@pytest.mark.parametrize("other", ["qwen2_audio", "audioflamingo3"])
def test_another_models_checkpoint_is_refused_and_nothing_is_written(tmp_path, other):
    """transformers' own config.json of another spliced LALM, given to --model=voxtral."""
    config = {"qwen2_audio": Qwen2AudioConfig, "audioflamingo3": AudioFlamingo3Config}[other]()
    config.save_pretrained(tmp_path / "hf")
    with pytest.raises(UnsupportedConfigError, match=rf"model_type='{other}'; --model=voxtral expects 'voxtral'"):
        ports.convert(tmp_path / "hf", tmp_path / "out", "voxtral")
    assert_nothing_written(tmp_path, "out")


def test_every_tensor_mismatch_is_listed_at_once(converted, tmp_path):
    *_, hf_dir = converted

    def edit(t):
        del t["multi_modal_projector.linear_2.weight"]
        t["multi_modal_projector.linear_1.weight"] = np.zeros((32, 16), np.float32)  # the frames not stacked
        t["multi_modal_projector.linear_1.bias"] = np.zeros(32, np.float32)  # Voxtral's adapter has none

    bad = copy_checkpoint(hf_dir, tmp_path / "bad", edit)
    with pytest.raises(ports.ConversionError) as err:
        ports.convert(bad, tmp_path / "out", "voxtral")
    msg = str(err.value)
    for piece in ("3 mismatches", "missing multi_modal_projector.linear_2.weight",
                  "unexpected multi_modal_projector.linear_1.bias",
                  "wrong shape multi_modal_projector.linear_1.weight: (32, 16)", "expected (64, 32)"):
        assert piece in msg, msg
    assert_nothing_written(tmp_path, "out")


def test_export_loads_in_transformers_with_the_same_logits(converted, tmp_path):
    _, module, params, _ = converted
    assert export_round_trip("voxtral", VoxtralForConditionalGeneration, module, params, batch([1, 2]),
                             tmp_path) <= TOL


def test_released_config_builds_abstractly_with_the_transformers_parameter_count():
    hf_cfg = json.loads((FIXTURES / "voxtral_mini_3b.config.json").read_text())
    config = VoxtralConfig.from_hf(hf_cfg)
    ours, theirs = released_parameter_counts("voxtral", config, VoxtralForConditionalGeneration,
                                             HFConfig(**hf_cfg))
    assert ours == theirs
    assert (config.audio.window_frames, config.tokens_per_window, config.audio_token_id) == (3000, 375, 24)
    assert not config.text.tie_word_embeddings


def test_greedy_generation_matches_transformers(converted):
    """esn_jax.generate vs transformers' generate: unedited, then an early stop and two interventions."""
    hf, module, params, _ = converted
    test_generate_parity.check_all(hf, module, params, batch([1, 2, 1]), 8, stop=2, pad=PAD, what="voxtral")
