"""Audio Flamingo 3 port vs transformers' AudioFlamingo3ForConditionalGeneration (tiny, float32)."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AudioFlamingo3Config as HFConfig
from transformers import AudioFlamingo3ForConditionalGeneration
from transformers.models.audioflamingo3.processing_audioflamingo3 import AudioFlamingo3Processor

import ports
from ports.audio import output_lengths
from ports.audio_flamingo3 import AudioFlamingo3, AudioFlamingo3Config
from ports.config import UnsupportedConfigError
from ports.models import abstract_params
from tests.ports.hf_fixtures import randomize_
from tests.ports.lalm_helpers import FIXTURES, count_params, hf_param_count, max_abs_diff

SOUND, PAD, MEL, WINDOW = 150, 0, 16, 20  # max_source_positions=10: 20-frame windows stand in for 3000
TEXT = dict(model_type="qwen2", vocab_size=160, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6})
AUDIO = dict(num_mel_bins=MEL, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_source_positions=WINDOW // 2)
TOL = 1e-4


def convert_random(root, text, seed=0):
    """A random transformers AF3 with ``text`` as its text_config, saved and converted: (hf, module, params)."""
    torch.manual_seed(seed)
    hf = randomize_(AudioFlamingo3ForConditionalGeneration(
        HFConfig(audio_config=AUDIO, text_config=text, audio_token_id=SOUND)), seed)
    hf.save_pretrained(root / "hf")
    ports.convert(root / "hf", root / "ours", "audio_flamingo3")
    return (hf, *ports.load(root / "ours"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("af3")
    return (*convert_random(root, TEXT), root)


def max_diff_to_transformers(hf, module, params, clip_frames):
    """max |Δlogits| over the real positions of left-padded prompts holding clips of ``clip_frames``."""
    feats, fmask, _ = windows(clip_frames)
    ids, mask = prompts(processor_counts(clip_frames))
    with torch.no_grad():
        want = hf(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                  input_features=torch.as_tensor(feats), input_features_mask=torch.as_tensor(fmask)).logits.numpy()
    got = np.asarray(module.apply({"params": params}, input_ids=jnp.asarray(ids), input_features=jnp.asarray(feats),
                                  input_features_mask=jnp.asarray(fmask), attention_mask=jnp.asarray(mask)))
    real = mask.astype(bool)
    return max_abs_diff(got[real], want[real])


def windows(clip_frames, seed=0):
    """Each clip cut into WINDOW-frame windows as the processor does: features [W, M, WINDOW] (padding
    frames random too, as real log-mel padding is not zero), mask [W, WINDOW], windows per clip."""
    lengths, per_clip = [], []
    for n in clip_frames:
        w = [min(WINDOW, n - s) for s in range(0, n, WINDOW)]
        lengths += w
        per_clip.append(len(w))
    feats = np.random.default_rng(seed).normal(size=(len(lengths), MEL, WINDOW)).astype(np.float32)
    mask = (np.arange(WINDOW)[None] < np.array(lengths)[:, None]).astype(np.int32)
    return feats, mask, per_clip


def processor_counts(clip_frames):
    """The processor's count: the formula applied to each clip's summed window lengths."""
    lengths = torch.tensor(clip_frames)
    return AudioFlamingo3Processor._get_audio_token_length(None, lengths).tolist()


def prompts(n_audio):
    """Left-padded: text <sound>*n text (AF3's template puts the sound before the text)."""
    rows = [[3, 4, *[SOUND] * n, 5, 6, 7][: 2 + n + 1 + i % 3] for i, n in enumerate(n_audio)]
    t = max(map(len, rows))
    ids = np.array([[PAD] * (t - len(r)) + r for r in rows], np.int32)
    return ids, (ids != PAD).astype(np.int32) | (np.cumsum(ids != PAD, 1) > 0)


@pytest.mark.parametrize("clip_frames", [[20], [40, 13], [27, 20, 5]],
                         ids=["one-window", "several-windows", "partial-windows"])
def test_logits_match_transformers(converted, clip_frames):
    hf, module, params, _ = converted
    _, fmask, _ = windows(clip_frames)
    # Windows are cut at WINDOW frames (an even number of conv outputs), so the processor's count on the
    # summed length equals the model's sum of per-window counts.
    assert sum(processor_counts(clip_frames)) == int(output_lengths(fmask.sum(1)).sum())
    diff = max_diff_to_transformers(hf, module, params, clip_frames)
    print(f"audio_flamingo3 {clip_frames}: max |dlogits| = {diff:.2e}")
    assert diff <= TOL


def test_a_llama_language_model_matches_transformers(tmp_path):
    """AF3's architecture around a Llama decoder (no biases), as the embedded mini-LALM is built. The text
    config says tied, but transformers' AF3 keeps its own lm_head (randomised apart here): so must we."""
    text = {**TEXT, "model_type": "llama", "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e5}}
    hf, module, params = convert_random(tmp_path, text, seed=1)
    assert (module.config.text.model_type, module.config.text.attention_bias) == ("llama", False)
    assert not module.config.text.tie_word_embeddings
    assert "bias" not in params["language_model"]["model"]["layers"]["self_attn"]["q_proj"]
    assert max_diff_to_transformers(hf, module, params, [40, 13]) <= TOL


def test_export_of_a_tied_language_model_writes_its_embedding_as_the_head(converted, tmp_path):
    """transformers' AF3 has its own lm_head whatever text_config says, so ``ports.export`` writes a tied
    model (the embedded mini-LALM's SmolLM2) untied, the embedding copied into the head; reading the export
    back gives the untied config."""
    _, module, params, _ = converted
    config = module.config
    assert AudioFlamingo3Config.from_hf(config.to_hf()) == config
    tied = dataclasses.replace(config, text=dataclasses.replace(config.text, tie_word_embeddings=True))
    tied_params = {**params, "language_model": {"model": params["language_model"]["model"]}}
    ports.export("audio_flamingo3", tied, tied_params, tmp_path / "hf")
    hf = AudioFlamingo3ForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert max_diff_to_transformers(hf, AudioFlamingo3(tied), tied_params, [40, 13]) <= TOL
    assert AudioFlamingo3Config.from_hf(json.loads((tmp_path / "hf" / "config.json").read_text())) == config
    with pytest.raises(UnsupportedConfigError, match="the audio encoder is not AF3's"):
        dataclasses.replace(config, audio=dataclasses.replace(config.audio, pool=False)).to_hf()


def test_processor_and_model_counts_agree_only_for_whole_windows():
    """The processor counts tokens on each clip's summed frames; the model sums per-window counts. They
    agree when every window but the last is whole (how the processor cuts); a window of odd conv length
    in the middle would break it, so the features module always cuts whole windows."""
    assert processor_counts([40 + 13]) == [int(output_lengths(20)) * 2 + int(output_lengths(13))]
    assert processor_counts([15 + 15]) == [7] != [int(output_lengths(15)) * 2] == [8]


def test_bad_inputs_are_named(converted):
    _, module, params, _ = converted
    feats, fmask, _ = windows([40, 13])
    ids, mask = prompts([16])
    with pytest.raises(ValueError, match=r"<sound> placeholders \(\[16\] per prompt\).*\(\[5, 5, 3\] per row"):
        module.apply({"params": params}, input_ids=jnp.asarray(ids), input_features=jnp.asarray(feats),
                     input_features_mask=jnp.asarray(fmask), attention_mask=jnp.asarray(mask))
    with pytest.raises(ValueError, match=r"windows \[0, 1, 2\] end within 2 frames of a window cut to 10"):
        module.apply({"params": params}, input_ids=jnp.asarray(ids), input_features=jnp.asarray(feats[..., :10]),
                     input_features_mask=jnp.asarray(fmask[:, :10]), attention_mask=jnp.asarray(mask))
    short = (np.arange(9) < 4)[None].repeat(len(fmask), 0).astype(fmask.dtype)  # clips ending well before the cut
    with pytest.raises(ValueError, match="takes 20 .* or an even number fewer"):
        module.apply({"params": params}, input_ids=jnp.asarray(ids), input_features=jnp.asarray(feats[..., :9]),
                     input_features_mask=jnp.asarray(short), attention_mask=jnp.asarray(mask))


def test_wrong_model_checkpoint_is_refused(converted, tmp_path):
    *_, root = converted
    with pytest.raises(UnsupportedConfigError, match=r"model_type='audioflamingo3'.*--model=qwen2_5_omni"):
        ports.convert(root / "hf", tmp_path / "x", "qwen2_5_omni")
    cfg = json.loads((root / "hf" / "config.json").read_text())
    with pytest.raises(UnsupportedConfigError, match=r"model_type='qwen2_5_omni_thinker'.*audio_flamingo3"):
        AudioFlamingo3Config.from_hf({**cfg, "model_type": "qwen2_5_omni_thinker"})
    with pytest.raises(UnsupportedConfigError, match="projector_hidden_act='silu'"):
        AudioFlamingo3Config.from_hf({**cfg, "projector_hidden_act": "silu"})
    config = AudioFlamingo3Config.from_hf(cfg)
    assert AudioFlamingo3Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_7b_config_builds_abstractly_with_the_transformers_parameter_count():
    hf_cfg = json.loads((FIXTURES / "audio_flamingo3_7b.config.json").read_text())
    config = AudioFlamingo3Config.from_hf(hf_cfg)
    _, abstract = abstract_params("audio_flamingo3", config, jnp.bfloat16)
    counts = hf_param_count(AudioFlamingo3ForConditionalGeneration, HFConfig(**hf_cfg))
    assert count_params(abstract) == sum(counts.values())
    assert config.audio.window_frames == 3000
