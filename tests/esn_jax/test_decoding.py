"""KV-cache generation (:mod:`esn_jax.decoding`) against full forwards.

The reference for every test is the model run from scratch: the left-padded prompt, then the tokens written so
far (embedded by the port's ``embed_answer``) in the columns after it, those not yet written masked out, and the
logits read at the last written column. Tiny random models (plain decoder, Audio Flamingo 3, the Qwen2.5-Omni
thinker and Kimi-Audio's text head, with audio features) in float32 at the highest matmul precision.

Shapes: V = variants, B = prompts, T = prompt length, N = new tokens, L = layers, I = neurons.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import esn_jax
import ports
from esn_jax import decoding, prefix, scoring
from ports.audio import AudioEncoderConfig, output_lengths
from ports.audio_flamingo3 import AudioFlamingo3, AudioFlamingo3Config
from ports.audio_flamingo3 import init_inputs as af3_init_inputs
from ports.kimi_audio import KimiAudio, KimiAudioConfig
from ports.kimi_audio import init_inputs as kimi_init_inputs
from ports.qwen2_5_omni import Qwen2_5OmniConfig, Qwen2_5OmniThinker
from ports.qwen2_5_omni import init_inputs as omni_init_inputs

jax.config.update("jax_default_matmul_precision", "highest")

VOCAB, AUDIO, BEGIN, END, BLANK = 64, 60, 61, 62, 63
LAYERS, NEURONS, MEL = 2, 40, 16
TEXT = ports.DecoderConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=NEURONS, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=1e4)
HEAD = (5, 17, 9)  # every prompt starts with these tokens, so the prompts share a prefix
N = 7  # new tokens
REL_TOL = 1e-5  # cached vs full-forward logits, relative to the largest |logit|


def random_params(module, seed, **inputs):
    """Random parameters of the module's shapes (numpy; no init is compiled): kernels N(0, 1 / fan-in),
    embeddings N(0, 1), norm scales 1 + N(0, 0.2) and biases N(0, 0.3), not flax's ones and zeros, which could
    hide a dropped norm or bias."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), **inputs))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, noise = str(path[-1]), rng.standard_normal(leaf.shape).astype(np.float32)
        if "kernel" in name:
            return noise / np.sqrt(leaf.shape[-2])
        if "scale" in name:
            return 1 + 0.2 * noise
        return noise if "embedding" in name else 0.3 * noise

    return jax.tree_util.tree_map_with_path(fill, shapes)


def left_pad(rows, pad=0):
    """Token rows -> ids [B, T] int32, attention_mask [B, T] int32, prompts ending at T - 1."""
    t = max(map(len, rows))
    ids = np.array([[pad] * (t - len(r)) + list(r) for r in rows], np.int32)
    mask = np.array([[0] * (t - len(r)) + [1] * len(r) for r in rows], np.int32)
    return ids, mask


def text_rows(rng, tails):
    return [[*HEAD, *rng.integers(1, AUDIO, n)] for n in tails]


def build_qwen2(rng):
    module = ports.Qwen2ForCausalLM(TEXT)
    params = random_params(module, 0, input_ids=np.zeros((1, 4), np.int32))
    ids, mask = left_pad(text_rows(rng, [4, 1, 6]))
    return module, params, {"input_ids": ids, "attention_mask": mask}


def build_audio_flamingo3(rng):
    """Three clips of one window each (20 frames = a whole window; 13 and 9 frames partial) -> 5, 3, 2 tokens."""
    audio = AudioEncoderConfig(num_mel_bins=MEL, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                               encoder_ffn_dim=32, max_source_positions=10, pool=True)
    config = AudioFlamingo3Config(audio=audio, text=TEXT, audio_token_id=AUDIO)
    module = AudioFlamingo3(config)
    params = random_params(module, 1, **af3_init_inputs(config))
    frames = np.array([20, 13, 9])
    feats = rng.standard_normal((3, MEL, audio.window_frames)).astype(np.float32)
    fmask = (np.arange(audio.window_frames)[None] < frames[:, None]).astype(np.int32)
    rows = [[*HEAD, *[AUDIO] * int(output_lengths(f)), *rng.integers(1, AUDIO, 1 + i)] for i, f in enumerate(frames)]
    ids, mask = left_pad(rows)
    return module, params, {"input_ids": ids, "attention_mask": mask, "input_features": feats,
                            "input_features_mask": fmask}


def build_qwen2_5_omni(rng):
    """Three clips of 21, 8, 13 frames in 8-frame chunks -> 5, 2, 3 audio tokens between begin/end markers."""
    audio = AudioEncoderConfig(num_mel_bins=MEL, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                               encoder_ffn_dim=32, max_source_positions=64, chunk_frames=8, positions="sinusoidal",
                               pool=True, output_dim=TEXT.hidden_size)
    config = Qwen2_5OmniConfig(audio=audio, text=TEXT, audio_token_id=AUDIO, audio_start_token_id=BEGIN,
                               audio_end_token_id=END)
    module = Qwen2_5OmniThinker(config)
    frames = np.array([21, 8, 13])
    feats = rng.standard_normal((3, MEL, frames.max())).astype(np.float32)
    fmask = (np.arange(frames.max())[None] < frames[:, None]).astype(np.int32)
    rows = [[*HEAD, BEGIN, *[AUDIO] * int(output_lengths(f)), END, *rng.integers(1, AUDIO, 3 - i)]
            for i, f in enumerate(frames)]
    ids, mask = left_pad(rows)
    params = random_params(module, 2, **omni_init_inputs(config))
    return module, params, {"input_ids": ids, "attention_mask": mask, "input_features": feats,
                            "feature_attention_mask": fmask}


def build_kimi_audio(rng):
    """Kimi's two streams: ``input_ids`` (audio stream) and ``text_input_ids`` (blanks under audio); three
    one-segment clips of 32, 17, 9 valid frames -> 4, 3, 2 continuous (Whisper) positions."""
    whisper = AudioEncoderConfig(num_mel_bins=MEL, d_model=8, encoder_layers=1, encoder_attention_heads=2,
                                 encoder_ffn_dim=16, max_source_positions=16)
    config = KimiAudioConfig(text=TEXT, whisper=whisper, mimo_layers=1, mimo_from_layer=1, adaptor_input_dim=32,
                             text_blank_id=BLANK, token_offset=VOCAB)
    module = KimiAudio(config)
    params = random_params(module, 3, **kimi_init_inputs(config))
    frames = np.array([32, 17, 9])
    feats = rng.standard_normal((3, MEL, whisper.window_frames)).astype(np.float32)
    fmask = (np.arange(whisper.window_frames)[None] < frames[:, None]).astype(np.int32)
    audio_rows, text_rows_, cont_rows = [], [], []
    for i, f in enumerate(frames):
        n, tail = -(-f // 8), rng.integers(1, AUDIO, 1 + i).tolist()
        audio_rows.append([*HEAD, BEGIN, *rng.integers(1, AUDIO, n), END, *[BLANK] * len(tail)])
        text_rows_.append([*HEAD, BLANK, *[BLANK] * n, BLANK, *tail])
        cont_rows.append([0] * (len(HEAD) + 1) + [1] * n + [0] * (1 + len(tail)))
    ids, mask = left_pad(audio_rows)
    text_ids, _ = left_pad(text_rows_)
    cont, _ = left_pad(cont_rows)
    return module, params, {"input_ids": ids, "text_input_ids": text_ids, "whisper_input_features": feats,
                            "whisper_input_mask": fmask, "is_continuous_mask": cont.astype(bool),
                            "attention_mask": mask}


BUILDERS = {"qwen2": build_qwen2, "audio_flamingo3": build_audio_flamingo3, "qwen2_5_omni": build_qwen2_5_omni,
            "kimi_audio": build_kimi_audio}


@functools.cache
def tiny(name):
    """(module, params, batch) of a tiny random port: 3 left-padded prompts of different lengths sharing HEAD."""
    rng = np.random.default_rng(0)
    module, params, batch = BUILDERS[name](rng)
    return module, params, batch


@pytest.fixture(scope="module")
def qwen2():
    return tiny("qwen2")


def an_edit(seed):
    """A strong position-independent edit [L, I]: 40 % of the neurons scaled by 0..4 and shifted."""
    rng = np.random.default_rng(seed)
    chosen = rng.random((LAYERS, NEURONS)) < 0.4
    return {"mlp_in": {"scale": np.where(chosen, rng.uniform(0, 4, chosen.shape), 1).astype(np.float32),
                       "shift": np.where(chosen, rng.normal(0, 0.5, chosen.shape), 0).astype(np.float32)}}


def three_variants():
    """V = 3 stacked edits [V, L, I]: the identity, then two strong edits."""
    identity = {"mlp_in": {"scale": np.ones((LAYERS, NEURONS), np.float32),
                           "shift": np.zeros((LAYERS, NEURONS), np.float32)}}
    return esn_jax.stack([identity, an_edit(1), an_edit(2)])


def variant(edits, v):
    return jax.tree.map(lambda x: x[v], edits)


# --- the reference: full forwards -------------------------------------------------------------------------------

_embed = jax.jit(scoring.embed, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _answer(module, params, ids):
    return module.apply({"params": params}, ids, method="embed_answer")


@functools.partial(jax.jit, static_argnums=0)
def _logits_at(module, params, embeds, mask, edits, column):
    b = embeds.shape[0]
    out = module.apply({"params": params}, inputs_embeds=embeds, attention_mask=mask, interventions=edits,
                       logits_positions=jnp.full((b, 1), column, jnp.int32))
    return out[:, 0]


class FullForward:
    """Logits of the whole sequence so far: prompt [B, T] (left-padded) + ``tokens`` [B, N] in columns T..T+N-1."""

    def __init__(self, module, params, batch):
        self.module, self.params = module, params
        embedded = _embed(module, params, dict(batch))
        self.x, self.mask = embedded["inputs_embeds"], np.asarray(embedded["attention_mask"], np.int32)
        self.b, self.t = self.mask.shape

    def logits(self, tokens, i, edits=None):
        """[B, vocab] predicting token i from the prompt and tokens[:, :i] (later columns masked out)."""
        n = tokens.shape[1]
        seq = jnp.concatenate([self.x, _answer(self.module, self.params, jnp.asarray(tokens, jnp.int32))], axis=1)
        written = np.broadcast_to(np.arange(n) < i, (self.b, n)).astype(np.int32)
        mask = np.concatenate([self.mask, written], axis=1)
        return np.asarray(_logits_at(self.module, self.params, seq, mask, edits, self.t - 1 + i), np.float64)

    def greedy(self, n, edits=None):
        """ids [B, n] of the naive loop: a full forward per token, argmax."""
        tokens = np.zeros((self.b, n), np.int32)
        for i in range(n):
            tokens[:, i] = self.logits(tokens, i, edits).argmax(-1)
        return tokens

    def columns(self, n, prompt: bool):
        """[B, T + n] bool: the prompt's columns (``prompt``) or the generated ones."""
        cols = np.arange(self.t + n) < self.t
        return np.broadcast_to(cols if prompt else ~cols, (self.b, self.t + n))


# --- 1. the cache is exact ----------------------------------------------------------------------------------------

_prefill = jax.jit(decoding.prefill, static_argnums=(0, 5))
_step = jax.jit(decoding.step, static_argnums=0)
_prefix_cache = jax.jit(prefix.cache, static_argnums=0)


def cached_logits(module, params, batch, n, edits, share):
    """Greedy decoding driven by hand through ``prefill`` and ``step`` -> (tokens [B, n], logits [n, B, vocab])."""
    embedded = _embed(module, params, dict(batch))
    shared = None
    if share:
        p = prefix.shared_length(embedded)
        assert p >= len(HEAD)
        head, embedded = prefix.split(embedded, p)
        shared = _prefix_cache(module, params, head, edits or {})
    logits, cache, positions = _prefill(module, params, embedded, shared, edits, n - 1)
    first_slot = cache["mask"].shape[1] - (n - 1)
    steps, tokens = [logits], [jnp.argmax(logits, -1)]
    for i in range(1, n):
        logits, cache = _step(module, params, cache, tokens[-1], positions + i - 1, first_slot + i - 1, edits)
        steps.append(logits)
        tokens.append(jnp.argmax(logits, -1))
    return np.stack(tokens, axis=1).astype(np.int32), np.asarray(jnp.stack(steps), np.float64)


@pytest.mark.parametrize("name, share", [("qwen2", False), ("qwen2", True), ("audio_flamingo3", False),
                                         ("qwen2_5_omni", False), ("kimi_audio", False)])
def test_every_cached_step_equals_a_full_forward(name, share):
    """Greedy steps through prefill + step under an edit (every position): logits at each step within REL_TOL of a
    full forward; with ``share`` the prompt prefix the rows share is a separate cache before every row's own."""
    module, params, batch = tiny(name)
    edits = an_edit(0)
    tokens, got = cached_logits(module, params, batch, N, edits, share)
    full = FullForward(module, params, batch)
    for i in range(N):
        want = full.logits(tokens, i, edits)
        scale = np.abs(want).max()
        assert scale > 1.0  # logits of a real spread, so that the relative bound means something
        assert np.abs(got[i] - want).max() / scale <= REL_TOL, i
    # Rows of different lengths generate different continuations: the steps are not trivially alike.
    assert len({tuple(row) for row in tokens}) == len(tokens)


@pytest.mark.parametrize("name", ["audio_flamingo3", "qwen2_5_omni", "kimi_audio"])
def test_generate_through_the_audio_ports_equals_the_naive_loop(name):
    """generate embeds the audio batch once, shares the text prefix; both variants equal full forwards."""
    module, params, batch = tiny(name)
    assert prefix.shared_length(_embed(module, params, dict(batch))) >= len(HEAD)
    edits = esn_jax.stack([an_edit(3), an_edit(4)])
    ids, lengths = esn_jax.generate(module, params, batch, N, edits)
    full = FullForward(module, params, batch)
    for v in range(2):
        np.testing.assert_array_equal(ids[v], full.greedy(N, variant(edits, v)))
    np.testing.assert_array_equal(lengths, np.full((2, 3), N))


# --- 2. generate equals the naive loop ------------------------------------------------------------------------------

def test_greedy_equals_the_naive_loop_without_intervention(qwen2):
    module, params, batch = qwen2
    ids, lengths = esn_jax.generate(module, params, batch, N)
    assert ids.shape == (3, N) and ids.dtype == jnp.int32 and lengths.shape == (3,)
    np.testing.assert_array_equal(ids, FullForward(*qwen2).greedy(N))
    np.testing.assert_array_equal(lengths, [N] * 3)


def test_stacked_variants_equal_the_naive_loop_and_each_variant_alone(qwen2):
    module, params, batch = qwen2
    edits = three_variants()
    ids, lengths = esn_jax.generate(module, params, batch, N, edits)
    assert ids.shape == (3, 3, N) and lengths.shape == (3, 3)
    full = FullForward(*qwen2)
    for v in range(3):
        np.testing.assert_array_equal(ids[v], full.greedy(N, variant(edits, v)))
        alone, alone_lengths = esn_jax.generate(module, params, batch, N,
                                                jax.tree.map(lambda x: x[None], variant(edits, v)))
        np.testing.assert_array_equal(alone, ids[v:v + 1])
        np.testing.assert_array_equal(alone_lengths, lengths[v:v + 1])
    np.testing.assert_array_equal(ids[0], esn_jax.generate(module, params, batch, N)[0])  # identity = unedited
    assert (ids[1] != ids[0]).any() and (ids[2] != ids[0]).any()  # the edits change what is written
    chunked, chunked_lengths = esn_jax.generate(module, params, batch, N, edits, chunk_size=2)
    np.testing.assert_array_equal(chunked, ids)
    np.testing.assert_array_equal(chunked_lengths, lengths)


def test_sharing_the_prompt_prefix_changes_nothing(qwen2):
    """The variants include the identity (no intervention) and two edits."""
    module, params, batch = qwen2
    assert prefix.shared_length(_embed(module, params, dict(batch))) >= len(HEAD)
    edits = three_variants()
    shared, _ = esn_jax.generate(module, params, batch, N, edits, share_prefix=True)
    own, _ = esn_jax.generate(module, params, batch, N, edits, share_prefix=False)
    np.testing.assert_array_equal(shared, own)


# --- 3. where the edits apply ---------------------------------------------------------------------------------------

def test_edits_nowhere_is_the_unedited_model(qwen2):
    module, params, batch = qwen2
    ids, _ = esn_jax.generate(module, params, batch, N, three_variants(), edit_prompt=False, edit_generated=False)
    clean, _ = esn_jax.generate(module, params, batch, N)
    np.testing.assert_array_equal(ids, np.broadcast_to(clean, ids.shape))


@pytest.mark.parametrize("prompt", [True, False], ids=["prompt-only", "generated-only"])
def test_edits_on_the_prompt_or_on_the_generated_tokens_only(qwen2, prompt):
    """The reference applies each edit at the prompt's (or the generated tokens') columns, the identity elsewhere
    (``at_positions``: edits [L, B, T + N, I])."""
    module, params, batch = qwen2
    edits = three_variants()
    ids, _ = esn_jax.generate(module, params, batch, N, edits, edit_prompt=prompt, edit_generated=not prompt)
    everywhere, _ = esn_jax.generate(module, params, batch, N, edits)
    full = FullForward(*qwen2)
    where = full.columns(N, prompt)
    for v in range(3):
        np.testing.assert_array_equal(ids[v], full.greedy(N, esn_jax.at_positions(variant(edits, v), where)))
    assert (ids[1:] != everywhere[1:]).any()  # the edits at the other columns matter


def test_a_position_specific_edit_covers_the_prompt_only(qwen2):
    """Edits [V, L, B, T, I] on chosen prompt positions: generated tokens get the identity (``generated_edits``)."""
    module, params, batch = qwen2
    b, t = batch["input_ids"].shape
    chosen = np.random.default_rng(5).random((b, t)) < 0.6
    edits = jax.vmap(esn_jax.at_positions, in_axes=(0, None))(three_variants(), chosen)
    assert jax.tree.leaves(edits)[0].shape == (3, LAYERS, b, t, NEURONS)
    ids, _ = esn_jax.generate(module, params, batch, N, edits)
    full = FullForward(*qwen2)
    prompt_cols = np.concatenate([chosen, np.zeros((b, N), bool)], axis=1)
    for v in range(3):
        want = full.greedy(N, esn_jax.at_positions(variant(three_variants(), v), prompt_cols))
        np.testing.assert_array_equal(ids[v], want)


def test_generated_edits_keep_what_has_no_prompt_position_axis():
    lt = np.ones((LAYERS, NEURONS))
    per_position = np.ones((LAYERS, 3, 9, NEURONS))
    per_row = np.ones((LAYERS, 3, 1, NEURONS))
    kept = decoding.generated_edits({"gate_act": {"scale": lt, "shift": per_position},
                                     "mlp_in": {"scale": per_position}})
    assert set(kept) == {"gate_act"} and set(kept["gate_act"]) == {"scale"}
    kept = decoding.generated_edits({"mlp_in": {"scale": per_row, "shift": lt}})
    assert {k: np.shape(v) for k, v in kept["mlp_in"].items()} == {"scale": per_row.shape, "shift": lt.shape}
    assert decoding.generated_edits(None) == {}


# --- 4. stop tokens --------------------------------------------------------------------------------------------------

def test_rows_stop_after_a_stop_token(qwen2):
    """Two stop tokens taken from what the variants write: each row is cut after its first one, the rest padded
    with the first stop token (the default pad)."""
    module, params, batch = qwen2
    edits = three_variants()
    free, _ = esn_jax.generate(module, params, batch, N, edits)
    free = np.asarray(free)
    stops = (int(free[1, 0, 2]), int(free[2, 1, 1]))
    ids, lengths = esn_jax.generate(module, params, batch, N, edits, stop_token_ids=stops)
    assert ids.shape == free.shape and lengths.shape == free.shape[:2]
    hits = np.isin(free, stops)
    want_lengths = np.where(hits.any(-1), hits.argmax(-1) + 1, N)
    np.testing.assert_array_equal(lengths, want_lengths)
    assert want_lengths.min() < N and want_lengths.max() > want_lengths.min()  # rows stop at different steps
    written = np.arange(N) < want_lengths[..., None]
    np.testing.assert_array_equal(np.where(written, ids, -1), np.where(written, free, -1))
    np.testing.assert_array_equal(np.asarray(ids)[~written], stops[0])


def test_all_rows_stopping_at_once_ends_early_with_full_shapes(qwen2):
    module, params, batch = qwen2
    free, _ = esn_jax.generate(module, params, batch, N)
    first = sorted({int(t) for t in np.asarray(free)[:, 0]})
    ids, lengths = esn_jax.generate(module, params, batch, N, stop_token_ids=first, pad_token_id=VOCAB - 1)
    assert ids.shape == (3, N) and lengths.shape == (3,)
    np.testing.assert_array_equal(ids[:, 0], free[:, 0])
    np.testing.assert_array_equal(ids[:, 1:], VOCAB - 1)
    np.testing.assert_array_equal(lengths, [1, 1, 1])


# --- 5. sampling -----------------------------------------------------------------------------------------------------

ROWS = 4000  # identical rows: independent draws of the first token from one distribution


def sharp(params, factor=3.0):
    """The model with its output head scaled: a peaked next-token distribution, so that a wrong temperature or
    cut shows in ROWS draws."""
    return {**params, "lm_head": {"kernel": params["lm_head"]["kernel"] * factor}}


def first_tokens(qwen2, row=1, **kw):
    """The first token generated for each of ROWS copies of prompt ``row`` (sharp model) -> [ROWS]."""
    module, params, batch = qwen2
    many = {k: np.repeat(v[row:row + 1], ROWS, axis=0) for k, v in batch.items()}
    ids, _ = esn_jax.generate(module, sharp(params), many, 2, **kw)
    return np.asarray(ids)[:, 0]


def next_token_logits(qwen2, row=1):
    """Prompt ``row``'s next-token logits [vocab] of the sharp model, from a full forward."""
    module, params, batch = qwen2
    return FullForward(module, sharp(params), batch).logits(np.zeros((3, N), np.int32), 0)[row]


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def tolerance(p, n=ROWS):
    """Per token: 5 binomial standard errors, plus 3 / n for tokens so unlikely that a few draws are not rare."""
    return 5 * np.sqrt(p * (1 - p) / n) + 3 / n


@pytest.mark.parametrize("temperature, other", [(1.0, 0.7), (0.7, 1.0)])
def test_sampled_frequencies_follow_the_tempered_softmax(qwen2, temperature, other):
    freq = np.bincount(first_tokens(qwen2, temperature=temperature, seed=11), minlength=VOCAB) / ROWS
    logits = next_token_logits(qwen2)
    want = softmax(logits / temperature)
    assert (np.abs(freq - want) <= tolerance(want)).all(), np.abs(freq - want).max()
    # The test tells temperatures apart: the other temperature's distribution is rejected.
    wrong = softmax(logits / other)
    assert (np.abs(freq - wrong) > tolerance(wrong)).any()


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others(qwen2):
    """Two seeds' draws disagree as often as independent draws do: a fraction 1 - sum p^2 of the rows."""
    a = first_tokens(qwen2, temperature=1.0, seed=11)
    np.testing.assert_array_equal(a, first_tokens(qwen2, temperature=1.0, seed=11))
    disagree = 1 - (softmax(next_token_logits(qwen2)) ** 2).sum()
    assert abs((a != first_tokens(qwen2, temperature=1.0, seed=13)).mean() - disagree) <= tolerance(disagree)


def test_top_p_keeps_the_smallest_set_reaching_p(qwen2):
    """top_p is set halfway into the third most likely token's probability: exactly the top three are drawn, in
    their renormalised proportions."""
    probs = softmax(next_token_logits(qwen2) / 0.7)
    order = np.argsort(-probs)
    top_p = probs[order[:2]].sum() + probs[order[2]] / 2
    tokens = first_tokens(qwen2, temperature=0.7, top_p=top_p, seed=12)
    kept = order[:3]
    assert set(np.unique(tokens)) <= set(kept.tolist())
    want = np.zeros(VOCAB)
    want[kept] = probs[kept] / probs[kept].sum()
    freq = np.bincount(tokens, minlength=VOCAB) / ROWS
    assert (np.abs(freq - want) <= tolerance(want)).all(), np.abs(freq - want).max()


# --- 6. bad inputs ---------------------------------------------------------------------------------------------------

def test_bad_inputs_are_refused(qwen2):
    module, params, batch = qwen2
    right = {k: v[:, ::-1].copy() for k, v in batch.items()}
    with pytest.raises(ValueError, match=r"left-padded prompts .* rows \[0, 1\] have padding after a token"):
        esn_jax.generate(module, params, right, N)
    with pytest.raises(ValueError, match="got answer_positions"):
        esn_jax.generate(module, params, {**batch, "answer_positions": np.array([8, 8, 8])}, N)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        esn_jax.generate(module, params, batch, 0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        esn_jax.generate(module, params, batch, N, temperature=-0.5)
    for top_p in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            esn_jax.generate(module, params, batch, N, temperature=1.0, top_p=top_p)
    single = an_edit(0)  # [L, I]: no variant axis
    with pytest.raises(ValueError, match="leading variant axis V"):
        esn_jax.generate(module, params, batch, N, single)
    with pytest.raises(ValueError, match="one leading variant axis V on every edit"):
        esn_jax.generate(module, params, batch, N, {"mlp_in": {"scale": np.ones((2, LAYERS, NEURONS)),
                                                               "shift": np.zeros((3, LAYERS, NEURONS))}})
    with pytest.raises(ValueError, match=r"bad interventions: mlp_in.scale has shape \(2, 41\)"):
        esn_jax.generate(module, params, batch, N, {"mlp_in": {"scale": np.ones((3, LAYERS, NEURONS + 1))}})
