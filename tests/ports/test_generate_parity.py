"""``esn_jax.generate`` against transformers' ``generate(do_sample=False)``: the same greedy ids token for token,
the same stops, padding and lengths, unedited and under interventions.

transformers is edited by forward pre-hooks on every decoder layer's ``mlp.down_proj`` multiplying its input by the
layer's scale: a ``gate_act`` scale [L, I] enters down_proj linearly, so the two are the same model (DESIGN §2).
Cases: tiny random Qwen2 / Llama decoders (GQA and MHA), tiny Qwen2.5-Omni thinker and Audio Flamingo 3 with audio,
the real SmolLM2-135M-Instruct (its packaged GGUF, read by both), and the mini-LALM's Hugging Face export. Prompts are
left-padded rows of different lengths; float32 at full matmul precision (tests/conftest.py).
"""

import contextlib
import time

import numpy as np
import pytest
import torch
from transformers import AudioFlamingo3ForConditionalGeneration

import esn_jax
import ports
from esn_jax.reference import mini_lalm
from experiments.bench.common import scaled_down_proj
from ports import prompts
from ports.audio import output_lengths
from tests.esn_jax.reference import test_mini_lalm
from tests.ports import hf_fixtures, test_audio_flamingo3, test_gguf, test_qwen2_5_omni

# Module-scoped fixtures of the port tests, reused under names of their own here.
omni_converted = test_qwen2_5_omni.converted
af3_converted = test_audio_flamingo3.converted
smollm2 = test_gguf.smollm2
mini = test_mini_lalm.mini
mini_export = test_mini_lalm.exported
mini_clips = test_mini_lalm.clips


@contextlib.contextmanager
def one_torch_thread():
    """Decoding steps are tiny: torch's thread pool only spin-waits on them, badly so when the cores are shared
    (SmolLM2's 16 steps took 47 s on two busy cores with two threads, 3 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def hf_generate(model, batch, n, stops, pad, scale=None):
    """transformers' greedy ids [B, n] (its early end padded with ``pad``) and its logits [B, S, vocab] of the S
    steps it ran. batch: the model's forward kwargs (left-padded prompts, audio inputs)."""
    inputs = {k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()}
    inputs["input_ids"] = inputs["input_ids"].long()
    with scaled_down_proj(model, scale), one_torch_thread(), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, eos_token_id=list(stops),
                             pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, batch["input_ids"].shape[1]:].numpy()
    ids = np.full((len(new), n), pad, np.int64)
    ids[:, :new.shape[1]] = new
    return ids, torch.stack(out.logits, 1).float().numpy()


def assert_same_generation(ours, our_lengths, theirs, logits, stops, pad, what):
    """ours [B, N] = transformers' ids; lengths = through each row's first stop token (else N); then padding.

    On a difference, names the first step where a row diverges and transformers' top-2 logit gap there: a gap near
    float32 rounding (~1e-5 of the logits) is a near-tie, a large one a bug."""
    ours, our_lengths = np.asarray(ours), np.asarray(our_lengths)
    differ = np.argwhere(ours != theirs)
    if differ.size:
        row, step = min(differ.tolist(), key=lambda rs: (rs[1], rs[0]))
        gap = "n/a (transformers had stopped)"
        if step < logits.shape[1]:
            top2 = np.sort(logits[row, step])[-2:]
            gap = f"{top2[1] - top2[0]:.3e}"
        raise AssertionError(f"{what}: row {row} first differs at step {step} (ours {ours[row, step]}, transformers "
                             f"{theirs[row, step]}); transformers' top-2 logit gap there: {gap}\n"
                             f"ours\n{ours}\ntransformers\n{theirs}")
    stopped = np.isin(theirs, stops)
    lengths = np.where(stopped.any(-1), stopped.argmax(-1) + 1, theirs.shape[1])
    np.testing.assert_array_equal(our_lengths, lengths, err_msg=what)
    for row, n in enumerate(lengths):
        assert (ours[row, n:] == pad).all(), (what, row)


def check(hf, module, params, batch, n, stops, pad, interventions=None, what=""):
    """Generates with both (each variant of ``interventions`` on its own in transformers) and asserts identical ids
    and lengths -> ours: ids [B, N] (or [V, B, N]), lengths [B] (or [V, B])."""
    ids, lengths = esn_jax.generate(module, params, batch, n, interventions, stop_token_ids=stops, pad_token_id=pad)
    if interventions is None:
        theirs, logits = hf_generate(hf, batch, n, stops, pad)
        assert_same_generation(ids, lengths, theirs, logits, stops, pad, what)
        return np.asarray(ids), np.asarray(lengths)
    scales = np.asarray(interventions["gate_act"]["scale"])
    for v, scale in enumerate(scales):
        theirs, logits = hf_generate(hf, batch, n, stops, pad, scale)
        assert_same_generation(ids[v], lengths[v], theirs, logits, stops, pad, f"{what} variant {v}")
    return np.asarray(ids), np.asarray(lengths)


def variants(num_layers, neurons, fraction, seed=0, alpha=4.0, identity_first=False):
    """[ablation, gain alpha] of random neurons (``fraction`` of each of three layers: first, middle, last), stacked
    {"gate_act": {"scale": [2, L, I]}}; ``identity_first`` puts the unedited model (scale 1) before them (V = 3)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((2, num_layers, neurons), bool)
    masks[:, [0, num_layers // 2, num_layers - 1]] = rng.random((2, 3, neurons)) < fraction
    edits = [esn_jax.ablate(masks[0]), esn_jax.gain(masks[1], alpha)]
    return esn_jax.stack([esn_jax.gain(np.zeros_like(masks[0]), 0.0)] * identity_first + edits)


def assert_visible(edited, unedited):
    """Each intervention changes some row's generation (else parity under it would prove nothing)."""
    for v, ids in enumerate(edited):
        assert (ids != unedited).any(), f"variant {v} generates what the unedited model does"


def early_stop(ids, step=2):
    """(row, token): a token that some row first writes at ``step`` ([B, N] greedy ids); as the stop id it ends
    that row after step + 1 tokens."""
    for row, tokens in enumerate(np.asarray(ids)):
        if tokens[step] not in tokens[:step]:
            return row, int(tokens[step])
    raise AssertionError(f"every row wrote its step-{step} token before:\n{ids}")


def check_all(hf, module, params, batch, n, stop, pad, what, fraction=0.3):
    """Unedited (stop id ``stop``); then, with a stop id some row writes at step 2 (that row ends early, the rest
    pad), unedited (scale 1) and under an ablation and a gain, as one stack of three variants."""
    unedited, _ = check(hf, module, params, batch, n, (stop,), pad, what=f"{what} unedited")
    row, early = early_stop(unedited)
    cfg = getattr(module.config, "text", module.config)  # an LALM's decoder config, or the decoder's own
    pad = (early + 1) % cfg.vocab_size  # a pad id apart from the stop id: padding must be told from a stop
    edits = variants(cfg.num_hidden_layers, cfg.intermediate_size, fraction, identity_first=True)
    ids, lengths = check(hf, module, params, batch, n, (early,), pad, edits, what=f"{what} stop {early}")
    assert lengths[0, row] == 3 and (ids[0, row, 3:] == pad).all(), (row, lengths)
    assert_visible(ids[1:], ids[0])


# --- a. tiny random decoders ---------------------------------------------------------------------------------------

DECODERS = {
    "qwen2-gqa": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-mha-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
    "llama-mqa-bias": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, attention_bias=True)),
}


def left_padded(vocab, lengths, seed=0, pad=0):
    """Random prompts of ``lengths`` tokens (ids 1..vocab-1), left-padded with ``pad``: ids, attention_mask [B, T]."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.full((len(lengths), t), pad, np.int32)
    mask = np.zeros((len(lengths), t), np.int32)
    for row, n in enumerate(lengths):
        ids[row, t - n:] = rng.integers(1, vocab, n)
        mask[row, t - n:] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_tiny_decoder(tmp_path, name):
    family, config = DECODERS[name]
    hf = hf_fixtures.causal_lm(tmp_path / "hf", family, vocab_size=96, num_hidden_layers=3, **config)
    ports.convert(tmp_path / "hf", tmp_path / "jax", family)
    module, params = ports.load(tmp_path / "jax")
    check_all(hf, module, params, left_padded(96, [9, 4, 6, 9, 2]), 10, stop=1, pad=0, what=name)


# --- b. tiny random LALMs with audio -------------------------------------------------------------------------------

def test_tiny_qwen2_5_omni(omni_converted):
    hf, module, params, _ = omni_converted
    frames = [21, 8, 37]
    feats, fmask = test_qwen2_5_omni.clips(frames)
    ids, mask = test_qwen2_5_omni.prompts([int(output_lengths(n)) for n in frames])
    batch = {"input_ids": ids, "attention_mask": mask, "input_features": feats, "feature_attention_mask": fmask}
    check_all(hf, module, params, batch, 10, stop=1, pad=test_qwen2_5_omni.PAD, what="qwen2.5-omni")


def test_tiny_audio_flamingo3(af3_converted):
    hf, module, params, _ = af3_converted
    frames = [40, 13, 27]
    feats, fmask, _ = test_audio_flamingo3.windows(frames)
    ids, mask = test_audio_flamingo3.prompts(test_audio_flamingo3.processor_counts(frames))
    batch = {"input_ids": ids, "attention_mask": mask, "input_features": feats, "input_features_mask": fmask}
    check_all(hf, module, params, batch, 10, stop=1, pad=test_audio_flamingo3.PAD, what="audio-flamingo3")


# --- c, d. real weights ------------------------------------------------------------------------------------------

def test_smollm2_generation(smollm2, report):
    """Four chat prompts of different lengths, 16 new tokens, stopping at the end of turn: unedited, and under an
    ablation and a gain of 2% of the neurons of three layers."""
    _, module, params, tokenizer, batch, hf = smollm2
    stops, pad, n = prompts.stop_token_ids(tokenizer), tokenizer.pad_token_id, 16
    start = time.perf_counter()
    unedited, lengths = check(hf, module, params, batch, n, stops, pad, what="SmolLM2 unedited")
    cfg = module.config
    edited, edited_lengths = check(hf, module, params, batch, n, stops, pad,
                                   variants(cfg.num_hidden_layers, cfg.intermediate_size, 0.02), what="SmolLM2")
    assert_visible(edited, unedited)
    assert (lengths < n).any(), "no prompt ends within the tokens: the stop was not exercised"
    texts = [tokenizer.decode(r[:k]) for r, k in zip(unedited, lengths, strict=True)]
    report(f"SmolLM2 generate = transformers, {len(unedited)} prompts x {n} tokens, lengths unedited "
           f"{lengths.tolist()}, ablated {edited_lengths[0].tolist()}, gain 4 {edited_lengths[1].tolist()} "
           f"({time.perf_counter() - start:.0f} s): {texts}")


@pytest.fixture(scope="module")
def mini_batch(mini, mini_clips):
    """Three clips of the synthetic corpus: left-padded prompts and features as transformers takes them (whole
    windows), for both."""
    module = mini[0]
    inputs, _ = mini_clips
    batch = {k: np.asarray(v)[:3] for k, v in inputs.items()}
    real = batch["attention_mask"].any(0)  # the eight-clip batch may pad these three more than they need
    batch["input_ids"], batch["attention_mask"] = batch["input_ids"][:, real], batch["attention_mask"][:, real]
    return {**batch, **test_mini_lalm.whole_windows(batch, module.config.audio.window_frames)}


def test_mini_lalm_generation(mini, mini_export, mini_batch, report):
    """The mini-LALM and its export in transformers' AudioFlamingo3ForConditionalGeneration, three clips, 8 new
    tokens: unedited, stopping at the end of turn; then running through it (the only stop id is ``<sound>``, which
    is never written), unedited (scale 1) and under an ablation and a gain of 2% of the neurons of three layers."""
    module, params, tokenizer, _ = mini
    hf = AudioFlamingo3ForConditionalGeneration.from_pretrained(mini_export, dtype=torch.float32).eval()
    cfg, n, pad = module.config.text, 8, tokenizer.pad_token_id
    start = time.perf_counter()
    stops = prompts.stop_token_ids(tokenizer)
    answers, lengths = check(hf, module, params, mini_batch, n, stops, pad, what="mini-LALM unedited")
    through = (tokenizer.convert_tokens_to_ids(mini_lalm.SOUND),)
    edits = variants(cfg.num_hidden_layers, cfg.intermediate_size, 0.02, identity_first=True)
    ids, _ = check(hf, module, params, mini_batch, n, through, pad, edits, what="mini-LALM through the end of turn")
    assert_visible(ids[1:], ids[0])
    answered = np.arange(n) < lengths[:, None]
    np.testing.assert_array_equal(ids[0][answered], answers[answered])  # the same answers, continued
    texts = [[tokenizer.decode(row) for row in variant] for variant in ids]
    report(f"mini-LALM generate = transformers' AF3 export, 3 clips x {n} tokens, answer lengths {lengths.tolist()} "
           f"({time.perf_counter() - start:.0f} s); unedited, ablated, gain 4: {texts}")
