"""GGUF -> the shared decoder: tiny random Llama GGUFs written with the ``gguf`` package, and the real
SmolLM2-135M-Instruct, each against transformers' ``LlamaForCausalLM`` loaded from the same file."""

import subprocess
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

import ports
from ports import gguf_np, packaged, prompts
from tests.ports.test_convert import assert_nothing_written
from tests.ports.test_decoder import padded_batch

TINY = dict(vocab=128, hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2)


def llama_cpp_permute(w, heads):
    """What llama.cpp's converter does to q/k rows: each head's two halves become interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path, seed=0, tied=False, quant=gguf.GGMLQuantizationType.Q8_0, architecture="llama",
                     extra_metadata=None, tensor_edit=None, rope_dims=None, **sizes):
    """A random Llama GGUF laid out as llama.cpp writes one: torch-layout [out, in] weights, q/k permuted,
    2-D weights quantised to ``quant`` (1-D norms stay float32)."""
    s = {**TINY, **sizes}
    rng = np.random.default_rng(seed)
    h, i, hd = s["hidden"], s["intermediate"], s["hidden"] // s["heads"]

    def mat(out, inp):
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    tensors = {"token_embd.weight": mat(s["vocab"], h),
               "output_norm.weight": (1 + 0.2 * rng.standard_normal(h)).astype(np.float32)}
    if not tied:
        tensors["output.weight"] = mat(s["vocab"], h)
    for layer in range(s["layers"]):
        blk = f"blk.{layer}."
        tensors.update({
            blk + "attn_norm.weight": (1 + 0.2 * rng.standard_normal(h)).astype(np.float32),
            blk + "ffn_norm.weight": (1 + 0.2 * rng.standard_normal(h)).astype(np.float32),
            blk + "attn_q.weight": llama_cpp_permute(mat(s["heads"] * hd, h), s["heads"]),
            blk + "attn_k.weight": llama_cpp_permute(mat(s["kv_heads"] * hd, h), s["kv_heads"]),
            blk + "attn_v.weight": mat(s["kv_heads"] * hd, h), blk + "attn_output.weight": mat(h, s["heads"] * hd),
            blk + "ffn_gate.weight": mat(i, h), blk + "ffn_up.weight": mat(i, h), blk + "ffn_down.weight": mat(h, i),
        })
    if tensor_edit:
        tensor_edit(tensors)
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_vocab_size(s["vocab"])
    w.add_block_count(s["layers"])
    w.add_context_length(256)
    w.add_embedding_length(h)
    w.add_feed_forward_length(i)
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(1e4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(rope_dims or hd)
    for key, value in (extra_metadata or {}).items():
        w.add_key_value(key, value, gguf.GGUFValueType.STRING if isinstance(value, str) else gguf.GGUFValueType.UINT32)
    for name, t in tensors.items():
        if t.ndim == 2 and t.dtype == np.float32 and quant is not None:
            w.add_tensor(name, gguf.quants.quantize(t, quant), raw_dtype=quant)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def torch_logits(model, ids, mask):
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                     position_ids=torch.as_tensor(positions)).logits.numpy()


def test_permutation_turns_interleaved_rope_into_rotate_half():
    """Rotating interleaved pairs of the permuted rows (llama.cpp's RoPE on its layout) equals permuting the
    rotate-half rotation of the original rows (transformers' RoPE on theirs), so un-permuting is the fix."""
    heads, d, pos = 3, 8, 5.0
    q = np.random.default_rng(0).standard_normal((heads * d, 1))
    angles = pos / 1e4 ** (np.arange(0, d, 2) / d)
    cos, sin = np.cos(angles), np.sin(angles)

    def rotate_half(x):
        x = x.reshape(heads, d)
        a, b = x[:, :d // 2], x[:, d // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1).reshape(-1, 1)

    def rotate_pairs(x):
        x = x.reshape(heads, d // 2, 2)
        a, b = x[..., 0], x[..., 1]
        return np.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(-1, 1)

    permuted = llama_cpp_permute(q, heads)
    np.testing.assert_allclose(rotate_pairs(permuted), llama_cpp_permute(rotate_half(q), heads), atol=1e-12)
    np.testing.assert_array_equal(gguf_np.halves_from_interleaved(permuted, heads), q)
    np.testing.assert_array_equal(gguf_np.interleaved_from_halves(q, heads), permuted)


@pytest.mark.parametrize("tied, quant", [(False, gguf.GGMLQuantizationType.Q8_0),
                                         (True, gguf.GGMLQuantizationType.Q4_1), (False, None)])
def test_tiny_gguf_matches_transformers(tmp_path, tied, quant):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tied=tied, quant=quant)
    ports.convert_gguf(path, tmp_path / "jax")
    module, params = ports.load(tmp_path / "jax")
    assert module.config.model_type == "llama" and module.config.tie_word_embeddings == tied
    assert not (tmp_path / "jax" / "tokenizer.json").exists()  # the file carries no tokenizer
    reference = LlamaForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    for side in ("left", "right"):
        ids, mask, _ = padded_batch(TINY["vocab"], side)
        ours = np.asarray(module.apply({"params": params}, input_ids=ids, attention_mask=mask))
        ref = torch_logits(reference, ids, mask)
        real = mask.astype(bool)
        assert np.abs(ours - ref)[real].max() <= 1e-4, side
        np.testing.assert_array_equal(ours.argmax(-1)[real], ref.argmax(-1)[real])


def test_command_line(tmp_path):
    path = write_llama_gguf(tmp_path / "tiny.gguf")
    run = subprocess.run([sys.executable, "-m", "experiments.convert", "--model=llama", f"--gguf={path}",
                          f"--out={tmp_path / 'out'}", "--dtype=bfloat16"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert ports.load(tmp_path / "out")[0].dtype == jnp.bfloat16
    run = subprocess.run([sys.executable, "-m", "experiments.convert", "--model=qwen2", f"--gguf={path}",
                          f"--out={tmp_path / 'x'}"], capture_output=True, text=True)
    assert run.returncode != 0 and "--gguf converts --model=llama, not --model=qwen2" in run.stderr
    assert_nothing_written(tmp_path, "x")


def test_truncated_file(tmp_path):
    path = write_llama_gguf(tmp_path / "tiny.gguf")
    data = path.read_bytes()
    for keep in (len(data) - 1000, 200):
        path.write_bytes(data[:keep])
        with pytest.raises(ports.CheckpointFileError, match=r"tiny.gguf cannot be read as GGUF \(truncated"):
            ports.convert_gguf(path, tmp_path / "out")
        assert_nothing_written(tmp_path, "out")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(architecture="qwen2"), ports.UnsupportedConfigError,
     r"general.architecture='qwen2'; the GGUF reader converts 'llama' only"),
    (dict(extra_metadata={"llama.rope.scaling.type": "yarn"}), ports.UnsupportedConfigError,
     r"metadata \['llama.rope.scaling.type'\] is not implemented by the llama port"),
    (dict(rope_dims=8), ports.UnsupportedConfigError,
     r"\{'llama.rope.dimension_count': 8\} differ from head_dim=16"),
    # F64 is a type the gguf package has no numpy dequantiser for.
    (dict(tensor_edit=lambda t: t.update({"output_norm.weight": t["output_norm.weight"].astype(np.float64)})),
     ports.CheckpointFileError, r"stores tensors as \['F64'\], which the gguf package .* cannot dequantise"),
    (dict(tensor_edit=lambda t: t.pop("blk.1.ffn_up.weight")), ports.ConversionError,
     r"1 mismatches with the port:\n  missing blk.1.ffn_up.weight"),
])
def test_bad_files_are_refused_by_name(tmp_path, kwargs, error, message):
    path = write_llama_gguf(tmp_path / "tiny.gguf", **kwargs)
    with pytest.raises(error, match=message):
        ports.convert_gguf(path, tmp_path / "out")
    assert_nothing_written(tmp_path, "out")


QUESTIONS = ["What is the capital of France?", "Write one sentence about the sea.",
             "The speaker sounds happy, sad, angry or neutral. Which emotion is it? Answer with one word.",
             "2 + 2 ="]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct converted from its packaged GGUF, and transformers' model from the same file."""
    path = packaged.smollm2_gguf()
    out = ports.convert_gguf(path, tmp_path_factory.mktemp("smollm2") / "jax")
    module, params = ports.load(out)
    tokenizer = prompts.load_tokenizer(out)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True) for q in QUESTIONS]
    batch = prompts.tokenize(tokenizer, texts)
    reference = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return out, module, params, tokenizer, batch, reference


def test_smollm2_config_and_tokenizer(smollm2):
    _, module, _, tokenizer, batch, _ = smollm2
    cfg = module.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size, cfg.rope_theta, cfg.tie_word_embeddings,
            cfg.attention_bias) == (30, 576, 1536, 9, 3, 49152, 1e5, True, False)
    # The tokenizer written beside the checkpoint is transformers' conversion of the GGUF's own.
    path = packaged.smollm2_gguf()
    original = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert tokenizer.chat_template == original.chat_template
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert tokenizer.encode(text, add_special_tokens=False) == original.encode(text, add_special_tokens=False)
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"].all()  # left-padded rows


def test_smollm2_logits_match_transformers(smollm2, report):
    _, module, params, _, batch, reference = smollm2
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ours = np.asarray(jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask))
    ref = torch_logits(reference, ids, mask)
    real = mask.astype(bool)
    diff = np.abs(ours - ref)[real].max()
    report(f"SmolLM2 float32: max |Δlogits| {diff:.2e} over {real.sum()} positions (|logits| up to "
          f"{np.abs(ref[real]).max():.1f})")
    assert diff <= 1e-3
    np.testing.assert_array_equal(ours.argmax(-1)[real], ref.argmax(-1)[real])


def greedy(module, params, ids, mask, steps):
    """Greedy continuation of left-padded prompts, one compiled forward: the new tokens fill a buffer whose
    unwritten columns are masked out (causal attention never looks ahead)."""
    b, t = ids.shape
    buf = np.concatenate([ids, np.zeros((b, steps), ids.dtype)], 1)
    live = np.concatenate([mask, np.zeros((b, steps), mask.dtype)], 1)
    step = jax.jit(lambda p, i, a, at: module.apply({"params": p}, input_ids=i, attention_mask=a,
                                                    logits_positions=at)[:, 0].argmax(-1))
    for k in range(steps):
        buf[:, t + k] = np.asarray(step(params, buf, live, np.full((b, 1), t - 1 + k)))
        live[:, t + k] = 1
    return buf[:, t:]


def test_smollm2_greedy_generation_matches_transformers(smollm2, report):
    _, module, params, tokenizer, batch, reference = smollm2
    ids, mask, steps = batch["input_ids"], batch["attention_mask"], 8
    ours = greedy(module, params, ids, mask, steps)
    with torch.no_grad():
        ref = reference.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                                 max_new_tokens=steps, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    ref = ref[:, ids.shape[1]:].numpy()
    for row in range(len(ids)):  # transformers pads a row after its end-of-turn token
        ended = np.flatnonzero(ref[row] == tokenizer.eos_token_id)
        n = ended[0] + 1 if ended.size else steps
        np.testing.assert_array_equal(ours[row, :n], ref[row, :n])
    report(f"SmolLM2 greedy, ours = transformers: {[tokenizer.decode(r) for r in ours]}")


def test_smollm2_bfloat16(smollm2, report):
    out, module, params, _, batch, _ = smollm2
    ids, mask = batch["input_ids"], batch["attention_mask"]
    low_module, low_params = ports.load(out, dtype=jnp.bfloat16)
    low = np.asarray(jax.jit(low_module.apply)({"params": low_params}, input_ids=ids, attention_mask=mask),
                     np.float32)
    high = np.asarray(jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask))
    real = mask.astype(bool)
    agreement = (low.argmax(-1) == high.argmax(-1))[real].mean()
    report(f"SmolLM2 bfloat16: top-1 agreement with float32 {agreement:.3f} over {real.sum()} positions, "
          f"max |Δlogits| {np.abs(low - high)[real].max():.2f}")
    assert agreement > 0.5  # a broken bfloat16 path agrees at chance (~0); rounding alone flips only near-ties
