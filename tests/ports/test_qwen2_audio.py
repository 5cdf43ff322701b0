"""Qwen2-Audio port vs transformers' Qwen2AudioForConditionalGeneration (tiny, float32).

The batches come from transformers' own ``Qwen2AudioProcessor`` (a tiny Whisper feature extractor whose
windows are 20 frames, and a stand-in word-level tokenizer holding the audio tokens), so the placeholder
counts are the processor's, and the prompts are left-padded as its tokenizer pads them.
"""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AudioFlamingo3Config,
    PreTrainedTokenizerFast,
    Qwen2AudioForConditionalGeneration,
    VoxtralConfig,
    WhisperFeatureExtractor,
)
from transformers import Qwen2AudioConfig as HFConfig
from transformers.models.qwen2_audio.processing_qwen2_audio import Qwen2AudioProcessor

import ports
from ports.config import UnsupportedConfigError
from ports.qwen2_audio import Qwen2Audio, Qwen2AudioConfig
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

MEL, WINDOW, HOP, RATE = 16, 20, 1600, 16000  # max_source_positions=10: 20-frame windows stand in for 3000
WORDS = ("<pad>", "hi", "what", "is", "this", "sound", "Audio", "1:")  # ids 0..7; <pad> = 0
SPECIAL = ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>")  # ids 8, 9, 10
PAD, AUDIO_ID = 0, 9
TEXT = dict(model_type="qwen2", vocab_size=160, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6})
AUDIO = dict(num_mel_bins=MEL, d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
             max_source_positions=WINDOW // 2)
QUESTIONS = ("what is this sound", "hi", "Audio 1: what is this", "this")
TOL = 1e-4


def processor():
    """transformers' Qwen2AudioProcessor on a Whisper extractor with WINDOW-frame windows (2 s at a 1600-sample
    hop) and a word-level tokenizer that pads on the left and splits out the audio tokens."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL)})
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL)) == [8, AUDIO_ID, 10]
    extractor = WhisperFeatureExtractor(feature_size=MEL, sampling_rate=RATE, hop_length=HOP,
                                        chunk_length=WINDOW * HOP // RATE)
    assert extractor.nb_max_frames == WINDOW
    return Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer)


CLIP = "<|audio_bos|><|AUDIO|><|audio_eos|>"  # one clip in a prompt, before the processor expands it


def processed(clip_frames, texts=None, seed=0):
    """The processor's batch for clips of ``clip_frames[i]`` frames: numpy input_ids, attention_mask [B, T],
    input_features [C, M, WINDOW] (the frames past each clip random, where the extractor writes its floor: a
    missing frame mask shows), feature_attention_mask [C, WINDOW]. ``texts``: the prompts, holding the clips
    in order (default one clip per prompt, each prompt's text before or after it: rows of different lengths)."""
    rng = np.random.default_rng(seed)
    clips = [0.1 * rng.normal(size=n * HOP).astype(np.float32) for n in clip_frames]
    if texts is None:
        texts = [f"{CLIP} {q}" if i % 2 else f"{q} {CLIP}" for i, q in enumerate(QUESTIONS[: len(clip_frames)])]
    out = processor()(text=texts, audio=clips, sampling_rate=RATE, padding=True, return_tensors="np")
    batch = {k: np.asarray(out[k]) for k in ("input_ids", "attention_mask", "input_features", "feature_attention_mask")}
    noise = rng.normal(size=batch["input_features"].shape).astype(np.float32)
    batch["input_features"] = np.where(batch["feature_attention_mask"][:, None].astype(bool), batch["input_features"],
                                       noise)
    return batch


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random transformers Qwen2-Audio, saved and converted: (hf, module, params, its directory)."""
    root = tmp_path_factory.mktemp("qwen2_audio")
    torch.manual_seed(0)
    hf = randomize_(Qwen2AudioForConditionalGeneration(
        HFConfig(audio_config=AUDIO, text_config=TEXT, audio_token_index=AUDIO_ID)), 0)
    hf.save_pretrained(root / "hf")
    ports.convert(root / "hf", root / "ours", "qwen2_audio")
    return (hf, *ports.load(root / "ours"), root / "hf")


@pytest.mark.parametrize("clip_frames", [[20, 13, 7], [3, 19, 20, 10]], ids=["full-13-7", "3-19-20-10"])
def test_logits_match_transformers(converted, clip_frames):
    """Clips shorter than the window (odd and even frame counts, the 3-frame minimum: one token) in one batch of
    left-padded prompts. The processor's placeholder count per prompt is what both models consume: transformers'
    encoder output lengths and our valid audio tokens (transformers also refuses a batch whose counts differ)."""
    hf, module, params, _ = converted
    batch = processed(clip_frames)
    frames = batch["feature_attention_mask"].sum(1)
    assert frames.tolist() == clip_frames
    placeholders = (batch["input_ids"] == AUDIO_ID).sum(1)
    _, theirs = hf.model.audio_tower._get_feat_extract_output_lengths(torch.as_tensor(frames))
    _, valid = module.apply({"params": params}, jnp.asarray(batch["input_features"]),
                            jnp.asarray(batch["feature_attention_mask"]), method=Qwen2Audio.audio_embeds)
    assert placeholders.tolist() == theirs.tolist() == np.asarray(valid).sum(1).tolist()
    diff = max_diff_to_transformers(hf, module, params, batch)
    print(f"qwen2_audio {clip_frames}: tokens {placeholders.tolist()}, max |dlogits| = {diff:.2e}")
    assert diff <= TOL


def test_two_clips_in_one_prompt_beside_a_text_only_prompt(converted):
    """Two clips and two prompts, both clips in the first (the port takes several clips in prompt order): only the
    total count may be checked, not one clip per prompt; transformers takes this batch."""
    hf, module, params, _ = converted
    batch = processed([20, 13], texts=[f"{CLIP} hi {CLIP} what", "what is this sound"])
    assert (batch["input_ids"] == AUDIO_ID).sum(1).tolist() == [5 + 3, 0]
    assert max_diff_to_transformers(hf, module, params, batch) <= TOL


def test_a_placeholder_too_few_or_too_many_is_refused_with_both_counts(converted):
    _, module, params, _ = converted
    batch = processed([20, 13, 7])  # 5, 3, 2 tokens
    ids = batch["input_ids"]
    first = np.argmax(ids == AUDIO_ID, axis=1)
    fewer, more = ids.copy(), ids.copy()
    fewer[1, first[1]] = WORDS.index("hi")
    more[1, first[1] - 1] = AUDIO_ID  # <|audio_bos|> -> <|AUDIO|>
    for edited, counts in ((fewer, "[5, 2, 2]"), (more, "[5, 4, 2]")):
        with pytest.raises(ValueError, match=rf"<\|AUDIO\|> placeholders \({re.escape(counts)} per prompt\).*"
                                             r"\(\[5, 3, 2\] per row"):
            our_logits(module, params, {**batch, "input_ids": edited})


def test_features_without_their_frame_mask_are_refused(converted):
    _, module, params, _ = converted
    batch = processed([20, 13, 7])
    del batch["feature_attention_mask"]
    with pytest.raises(ValueError, match=r"feature_attention_mask \[C, F\] is required with input_features"):
        our_logits(module, params, batch)


def test_config_round_trips_and_reads_the_saved_config(converted):
    _, module, _, hf_dir = converted
    config = module.config
    assert isinstance(module, Qwen2Audio)
    saved = json.loads((hf_dir / "config.json").read_text())
    assert Qwen2AudioConfig.from_hf(saved) == config
    assert Qwen2AudioConfig.from_hf(config.to_hf()) == config
    assert Qwen2AudioConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (config.audio_token_id, config.audio.window_frames, config.audio.pool) == (AUDIO_ID, WINDOW, True)
    assert (config.text.model_type, config.text.attention_bias, config.text.tie_word_embeddings) == ("qwen2", True,
                                                                                                    False)


@pytest.mark.parametrize("drop", [None, "rope_theta", "rms_norm_eps", "num_key_value_heads", "vocab_size",
                                  "intermediate_size"])
def test_released_text_config_reads_as_transformers_fills_it(drop):
    """The hub's text_config gives neither hidden_size nor the layer and head counts: transformers fills them
    (and any other attribute left out, ``drop``) with Qwen2Config's defaults; so must we."""
    hf_cfg = json.loads((FIXTURES / "qwen2_audio_7b_instruct.config.json").read_text())
    hf_cfg["text_config"].pop(drop, None)
    assert text_fields_differ(Qwen2AudioConfig.from_hf(hf_cfg).text, HFConfig(**hf_cfg).text_config) == {}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(frobnicate=1), r"qwen2_audio port: unknown attributes \['frobnicate'\]"),
    (lambda c: c["audio_config"].update(scale_embedding=True), "scale_embedding=True is not implemented"),
    (lambda c: c["audio_config"].update(activation_function="relu"), "activation_function='relu' is not implemented"),
    (lambda c: c["audio_config"].update(model_type="whisper"),
     "audio_config has model_type='whisper'; the qwen2_audio port implements 'qwen2_audio_encoder'"),
    (lambda c: c.update(model_type="qwen2_5_omni"), r"model_type='qwen2_5_omni'; --model=qwen2_audio expects"),
], ids=["unknown-attribute", "scale-embedding", "activation", "encoder-type", "model-type"])
def test_config_attributes_the_port_lacks_are_refused_by_name(converted, edit, message):
    *_, hf_dir = converted
    cfg = json.loads((hf_dir / "config.json").read_text())
    edit(cfg)
    with pytest.raises(UnsupportedConfigError, match=message):
        Qwen2AudioConfig.from_hf(cfg)


@pytest.mark.parametrize("other", ["voxtral", "audioflamingo3"])
def test_another_models_checkpoint_is_refused_and_nothing_is_written(tmp_path, other):
    """transformers' own config.json of another spliced LALM, given to --model=qwen2_audio."""
    config = {"voxtral": VoxtralConfig, "audioflamingo3": AudioFlamingo3Config}[other]()
    config.save_pretrained(tmp_path / "hf")
    with pytest.raises(UnsupportedConfigError, match=rf"model_type='{other}'; --model=qwen2_audio expects "
                                                     "'qwen2_audio'"):
        ports.convert(tmp_path / "hf", tmp_path / "out", "qwen2_audio")
    assert_nothing_written(tmp_path, "out")


def test_every_tensor_mismatch_is_listed_at_once(converted, tmp_path):
    *_, hf_dir = converted

    def edit(t):
        del t["multi_modal_projector.linear.bias"]
        t["audio_tower.layer_norm.weight"] = np.zeros(15, np.float32)
        t["audio_tower.proj.weight"] = np.zeros((4, 16), np.float32)  # Qwen2.5-Omni's encoder has one; not here

    bad = copy_checkpoint(hf_dir, tmp_path / "bad", edit)
    with pytest.raises(ports.ConversionError) as err:
        ports.convert(bad, tmp_path / "out", "qwen2_audio")
    msg = str(err.value)
    for piece in ("3 mismatches", "missing multi_modal_projector.linear.bias", "unexpected audio_tower.proj.weight",
                  "wrong shape audio_tower.layer_norm.weight: (15,)", "expected (16,)"):
        assert piece in msg, msg
    assert_nothing_written(tmp_path, "out")


def test_export_loads_in_transformers_with_the_same_logits(converted, tmp_path):
    _, module, params, _ = converted
    assert export_round_trip("qwen2_audio", Qwen2AudioForConditionalGeneration, module, params, processed([20, 13, 7]),
                             tmp_path) <= TOL


def test_released_config_builds_abstractly_with_the_transformers_parameter_count():
    hf_cfg = json.loads((FIXTURES / "qwen2_audio_7b_instruct.config.json").read_text())
    config = Qwen2AudioConfig.from_hf(hf_cfg)
    ours, theirs = released_parameter_counts("qwen2_audio", config, Qwen2AudioForConditionalGeneration,
                                             HFConfig(**hf_cfg))
    assert ours == theirs
    assert (config.audio.window_frames, config.audio_token_id, config.text.num_hidden_layers) == (3000, 151646, 32)


def test_greedy_generation_matches_transformers(converted):
    """esn_jax.generate vs transformers' generate: unedited, then an early stop and two interventions."""
    hf, module, params, _ = converted
    test_generate_parity.check_all(hf, module, params, processed([20, 13, 7]), 8, stop=1, pad=PAD,
                                   what="qwen2-audio")

