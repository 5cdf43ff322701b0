"""Conversion errors, atomic writes and the command line."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ports
from ports.config import DecoderConfig
from tests.ports import hf_fixtures


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    hf_fixtures.causal_lm(d, num_hidden_layers=2, tie_word_embeddings=False)
    return d


def copy_checkpoint(src, dst, edit=None, config_edit=None):
    """A copy of a single-file checkpoint with its tensors and config.json edited."""
    dst.mkdir()
    tensors = load_file(src / "model.safetensors")
    if edit:
        edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def assert_nothing_written(parent, name):
    assert not (parent / name).exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{name}")] == []


def test_every_mismatch_is_listed_and_nothing_is_written(hf_dir, tmp_path):
    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.0.mlp.extra.weight"] = np.zeros(3, np.float32)
        t["model.layers.2.mlp.up_proj.weight"] = np.zeros((48, 32), np.float32)  # a layer past the config
        t["model.norm.weight"] = np.zeros(31, np.float32)

    bad = copy_checkpoint(hf_dir, tmp_path / "bad", edit)
    with pytest.raises(ports.ConversionError) as err:
        ports.convert(bad, tmp_path / "out", "qwen2")
    msg = str(err.value)
    for piece in ("4 mismatches", "missing model.layers.1.mlp.up_proj.weight",
                  "unexpected model.layers.0.mlp.extra.weight", "unexpected model.layers.2.mlp.up_proj.weight",
                  "wrong shape model.norm.weight: (31,)", "expected (32,)"):
        assert piece in msg
    assert_nothing_written(tmp_path, "out")


def test_truncated_file(hf_dir, tmp_path):
    bad = copy_checkpoint(hf_dir, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ports.CheckpointFileError, match=r"model.safetensors is truncated: its tensors need \d+ bytes"):
        ports.convert(bad, tmp_path / "out", "qwen2")
    (bad / "model.safetensors").write_bytes(data[:20])
    with pytest.raises(ports.CheckpointFileError, match="truncated: header needs"):
        ports.convert(bad, tmp_path / "out", "qwen2")
    assert_nothing_written(tmp_path, "out")


def test_missing_shard(tmp_path):
    hf_fixtures.causal_lm(tmp_path / "hf", max_shard_size="30KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / "hf" / shard).unlink()
    with pytest.raises(ports.CheckpointFileError, match=f"names shards that are not in .*{shard} \\(\\d+ tensors\\)"):
        ports.convert(tmp_path / "hf", tmp_path / "out", "qwen2")


def test_no_checkpoint_files(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        ports.convert(tmp_path / "hf", tmp_path / "out", "qwen2")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ports.UnsupportedConfigError, match=r"missing attributes \['vocab_size'"):
        ports.convert(tmp_path / "hf", tmp_path / "out", "qwen2")
    cfg = dict(model_type="qwen2", vocab_size=8, hidden_size=4, intermediate_size=4, num_hidden_layers=1,
               num_attention_heads=1)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ports.CheckpointFileError, match="has neither model.safetensors nor"):
        ports.convert(tmp_path / "hf", tmp_path / "out", "qwen2")


@pytest.mark.parametrize("config_edit, message", [
    (lambda c: c.update(frobnicate=1), r"unknown attributes \['frobnicate'\]"),
    (lambda c: c.update(use_sliding_window=True, sliding_window=8, layer_types=None),
     "use_sliding_window=True is not implemented"),
    (lambda c: c.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     "rope_type='yarn' is not implemented"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act='gelu' is not implemented"),
    (lambda c: c.update(model_type="llama"), "model_type='llama'; expected 'qwen2'"),
])
def test_config_attributes_the_port_lacks_are_refused(hf_dir, tmp_path, config_edit, message):
    bad = copy_checkpoint(hf_dir, tmp_path / "bad", config_edit=config_edit)
    with pytest.raises(ports.UnsupportedConfigError, match=message):
        ports.convert(bad, tmp_path / "out", "qwen2")
    assert_nothing_written(tmp_path, "out")


def test_transformers_4_style_config_is_read():
    hf = dict(model_type="qwen2", vocab_size=10, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=None, rope_theta=5e5, rope_scaling=None,
              use_sliding_window=False, sliding_window=4096, max_window_layers=21)
    cfg = DecoderConfig.from_hf(hf)
    assert (cfg.rope_theta, cfg.num_key_value_heads, cfg.head_dim) == (5e5, 2, 4)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_a_config_without_theta_gets_transformers_default(family):
    from transformers import AutoConfig

    hf = dict(model_type=family, vocab_size=10, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
              num_attention_heads=2)
    assert DecoderConfig.from_hf(hf, family).rope_theta == AutoConfig.for_model(**hf).rope_parameters["rope_theta"]


def test_existing_output_is_kept_unless_overwrite(hf_dir, tmp_path):
    out = tmp_path / "out"
    ports.convert(hf_dir, out, "qwen2")
    stamp = (out / "port.json").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists"):
        ports.convert(hf_dir, out, "qwen2")
    assert (out / "port.json").stat().st_mtime_ns == stamp
    ports.convert(hf_dir, out, "qwen2", dtype="bfloat16", overwrite=True)
    assert json.loads((out / "port.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_dtypes(hf_dir, tmp_path):
    ports.convert(hf_dir, tmp_path / "f32", "qwen2")
    module, params = ports.load(tmp_path / "f32", dtype=jnp.bfloat16)
    assert {x.dtype for x in __import__("jax").tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    ids = np.arange(12).reshape(2, 6)
    low = module.apply({"params": params}, input_ids=ids)
    assert low.dtype == jnp.bfloat16
    module32, params32 = ports.load(tmp_path / "f32")
    high = module32.apply({"params": params32}, input_ids=ids)
    assert np.abs(np.asarray(low, np.float32) - high).max() < 0.1 * np.abs(high).max()
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        ports.convert(hf_dir, tmp_path / "x", "qwen2", dtype="int8")


def test_command_line(hf_dir, tmp_path):
    run = subprocess.run([sys.executable, "-m", "experiments.convert", "--model=qwen2", f"--hf_dir={hf_dir}",
                          f"--out={tmp_path / 'out'}", "--dtype=bfloat16"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"wrote {tmp_path / 'out'}" in run.stdout
    module, params = ports.load(tmp_path / "out")
    assert module.dtype == jnp.bfloat16
    run = subprocess.run([sys.executable, "-m", "experiments.convert", "--model=qwen2", f"--hf_dir={hf_dir}"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "--out" in run.stderr


def test_load_rejects_a_directory_that_is_not_ours(hf_dir):
    with pytest.raises(FileNotFoundError, match="not a converted checkpoint: no port.json"):
        ports.load(hf_dir)


@pytest.mark.parametrize("family, tied, bias", [("qwen2", False, True), ("qwen2", True, True),
                                               ("llama", True, False), ("llama", False, True)])
def test_export_loads_in_transformers_and_round_trips(tmp_path, family, tied, bias):
    import jax

    cfg = DecoderConfig(vocab_size=40, hidden_size=16, intermediate_size=20, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=4, rope_theta=1e4,
                        tie_word_embeddings=tied, attention_bias=bias, model_type=family)
    module = ports.Qwen2ForCausalLM(cfg)
    ids = np.random.RandomState(0).randint(0, 40, (2, 5))
    params = module.init(jax.random.key(1), ids)["params"]
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), params)
    ports.export(family, cfg, params, tmp_path / "hf")
    torch_model = hf_fixtures.FAMILIES[family][1].from_pretrained(tmp_path / "hf").eval()
    assert type(torch_model).__name__ == cfg.to_hf()["architectures"][0]
    ref = hf_fixtures.torch_logits(torch_model, ids, np.ones_like(ids), np.tile(np.arange(5), (2, 1)))
    np.testing.assert_allclose(module.apply({"params": params}, input_ids=ids), ref, atol=1e-4)
    ports.convert(tmp_path / "hf", tmp_path / "back", family)
    back_module, back = ports.load(tmp_path / "back")
    assert back_module.config == cfg
    jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize("edit, message", [
    (dict(mlp_bias=True), "mlp_bias=True is not implemented"),
    (dict(attention_dropout=0.1), "attention_dropout=0.1 is not implemented"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
     "rope_type='llama3' is not implemented"),
    (dict(use_sliding_window=True, sliding_window=16), "use_sliding_window=True is not implemented"),
])
def test_llama_config_attributes_the_port_lacks_are_refused(edit, message):
    from transformers import LlamaConfig

    hf = LlamaConfig(vocab_size=8, hidden_size=4, intermediate_size=4, num_hidden_layers=1,
                     num_attention_heads=1).to_dict()
    assert DecoderConfig.from_hf(hf, "llama").model_type == "llama"  # transformers' own defaults are read
    with pytest.raises(ports.UnsupportedConfigError, match=message):
        DecoderConfig.from_hf({**hf, **edit}, "llama")


def test_attention_bias_is_a_llama_attribute():
    qwen = dict(model_type="qwen2", vocab_size=8, hidden_size=4, intermediate_size=4, num_hidden_layers=1,
                num_attention_heads=1)
    with pytest.raises(ports.UnsupportedConfigError, match=r"unknown attributes \['attention_bias'\]"):
        DecoderConfig.from_hf({**qwen, "attention_bias": False})
    llama = DecoderConfig.from_hf({**qwen, "model_type": "llama"}, "llama")
    assert (llama.attention_bias, llama.o_proj_bias) == (False, False)
    with pytest.raises(ValueError, match="a qwen2 decoder always has q/k/v biases"):
        DecoderConfig(**{**llama.to_dict(), "model_type": "qwen2"})
