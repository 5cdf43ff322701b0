"""Prompt builders: the template text, the token ids through a tokenizer loaded from a directory, the
placeholder count from the features module, and left padding."""

import base64
import json
import re

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from ports import features, prompts
from ports.audio import output_lengths
from tests.ports.kimi_tokenizer_fixture import WORDS as KIMI_WORDS
from tests.ports.kimi_tokenizer_fixture import ranks_for, write_kimi_tokenizer
from tests.ports.qwen2_audio_tokenizer_fixture import SPECIAL_IDS as QWEN2_AUDIO_IDS
from tests.ports.qwen2_audio_tokenizer_fixture import write_qwen2_audio_tokenizer
from tests.ports.voxtral_tekken_fixture import (
    SPECIAL_TOKENS,
    mistral_common_chat,
    pcm16,
    write_tekken,
    write_tekken_from_wheel,
)
from tests.ports.voxtral_tekken_fixture import WORDS as TEKKEN_WORDS
from tests.ports.voxtral_tekken_fixture import ranks_for as ranks_for_tekken

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<sound>",
            *prompts.KIMI_TOKENS]
WORDS = ["[UNK]", "system", "user", "assistant", "\n", " ", "Be", "brief.", "What", "emotion?", "Hi"]
VOCAB = {t: i for i, t in enumerate(WORDS + SPECIALS)}


def make_tokenizer(d, specials):
    """A word-level tokenizer (whitespace characters are tokens of their own) saved as tokenizer.json +
    tokenizer_config.json, loaded back through AutoTokenizer as a checkpoint's would be."""
    vocab = {t: i for t, i in VOCAB.items() if t in WORDS or t in specials}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                         "pad_token": "<|endoftext|>", "unk_token": "[UNK]"}))
    return prompts.load_tokenizer(d)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"), SPECIALS)


def ids(*tokens):
    return [VOCAB[t] for t in tokens]


HEAD = ids("<|im_start|>", "system", "\n", "Be", " ", "brief.", "<|im_end|>", "\n", "<|im_start|>", "user", "\n")
TAIL = ids("What", " ", "emotion?", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n")


def clip(seconds, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * features.SAMPLE_RATE)).astype(np.float32)


def design_count(samples):
    """DESIGN §3: N = ((T - 1) // 2 + 1 - 2) // 2 + 1 for T = samples / 160 mel frames (25 tokens/s)."""
    t = samples // features.HOP
    return ((t - 1) // 2 + 1 - 2) // 2 + 1


def test_default_system_prompts_and_layout():
    omni = prompts.qwen2_5_omni("Hi", 2)  # the chat template's default system prompt
    assert omni == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|audio_bos|><|AUDIO|><|AUDIO|><|audio_eos|>Hi<|im_end|>\n<|im_start|>assistant\n")
    voice = prompts.qwen2_5_omni("Hi", 1, prompts.SYSTEM_PRESETS["omni_voice"])  # the model card's, for speech out
    assert voice.startswith("<|im_start|>system\nYou are Qwen, a virtual human developed by the Qwen Team, Alibaba "
                            "Group, capable of perceiving auditory and visual inputs, as well as generating text and "
                            "speech.<|im_end|>\n")
    assert prompts.audio_flamingo3("Hi", 2) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                                "<|im_start|>user\n<sound><sound>Hi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="n_audio=0"):
        prompts.audio_flamingo3("Hi", 0)
    assert prompts.qwen2_audio("Hi", 2) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                            "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|AUDIO|><|audio_eos|>\n"
                                            "Hi<|im_end|>\n<|im_start|>assistant\n")
    assert prompts.voxtral("Hi", 2) == "<s>[INST][BEGIN_AUDIO][AUDIO][AUDIO]Hi[/INST]"


def test_qwen2_5_omni_ids_with_the_count_from_the_features(tokenizer):
    audio = clip(2.5)
    mask = features.qwen2_5_omni([audio])["feature_attention_mask"]
    n = int(output_lengths(mask.sum()))
    assert n == design_count(audio.size) == 62
    batch = prompts.tokenize(tokenizer, [prompts.qwen2_5_omni("What emotion?", n, system="Be brief.")])
    want = HEAD + ids("<|audio_bos|>") + ids("<|AUDIO|>") * n + ids("<|audio_eos|>") + TAIL
    assert batch["input_ids"].tolist() == [want]
    assert batch["attention_mask"].tolist() == [[1] * len(want)]


def test_audio_flamingo3_ids_with_the_count_from_the_features(tokenizer):
    audio = clip(1.3)
    n = int(features.audio_flamingo3([audio])["num_audio_tokens"][0])
    assert n == design_count(audio.size) == 32
    batch = prompts.tokenize(tokenizer, [prompts.audio_flamingo3("What emotion?", n, system="Be brief.")])
    assert batch["input_ids"].tolist() == [HEAD + ids("<sound>") * n + TAIL]
    assert batch["input_ids"].dtype == np.int32


def test_batch_is_left_padded(tokenizer):
    counts = [int(n) for n in features.audio_flamingo3([clip(0.5, 1), clip(1.0, 2)])["num_audio_tokens"]]
    assert counts == [12, 25]
    batch = prompts.tokenize(tokenizer, [prompts.audio_flamingo3("What emotion?", n, system="Be brief.")
                                         for n in counts])
    rows = [HEAD + ids("<sound>") * n + TAIL for n in counts]
    width = len(rows[1])
    pad = VOCAB["<|endoftext|>"]
    assert batch["input_ids"].tolist() == [[pad] * (width - len(rows[0])) + rows[0], rows[1]]
    assert batch["attention_mask"].tolist() == [[0] * (width - len(rows[0])) + [1] * len(rows[0]), [1] * width]
    assert (batch["input_ids"] == VOCAB["<sound>"]).sum(1).tolist() == counts


def test_kimi_audio_streams(tokenizer):
    codes = [900, 901, 902]
    got = prompts.kimi_audio(tokenizer, "What emotion?", codes)
    blank, question = VOCAB["<|im_kimia_text_blank|>"], ids("What", " ", "emotion?")
    want_audio = [VOCAB["<|im_kimia_user_msg_start|>"], blank, blank, blank, VOCAB["<|im_media_begin|>"], *codes,
                  VOCAB["<|im_media_end|>"], VOCAB["<|im_kimia_speech_ct_id|>"], VOCAB["<|im_msg_end|>"],
                  VOCAB["<|im_kimia_assistant_msg_start|>"]]
    want_text = [blank, *question, *[blank] * 8]
    assert got["input_ids"].tolist() == want_audio
    assert got["text_input_ids"].tolist() == want_text
    assert got["is_continuous_mask"].tolist() == [False] * 5 + [True] * 3 + [False] * 4
    with pytest.raises(ValueError, match="codes is empty"):
        prompts.kimi_audio(tokenizer, "Hi", [])


def test_kimi_audio_needs_its_control_tokens(tmp_path):
    partial = make_tokenizer(tmp_path, [t for t in SPECIALS if t != "<|im_kimia_speech_ct_id|>"])
    with pytest.raises(ValueError, match=r"lacks Kimi-Audio's control tokens \['<\|im_kimia_speech_ct_id\|>'\]"):
        prompts.kimi_audio(partial, "Hi", [5])


def test_left_pad_streams(tokenizer):
    rows = [prompts.kimi_audio(tokenizer, "Hi", [900] * n) for n in (2, 5)]
    batch = prompts.left_pad(rows, pad_id=0)
    assert batch["input_ids"].shape == batch["text_input_ids"].shape == (2, 12)  # 1 + "Hi" + 1 + 5 codes + 4
    assert batch["attention_mask"].tolist() == [[0] * 3 + [1] * 9, [1] * 12]
    assert batch["is_continuous_mask"][0].tolist() == [False] * 3 + rows[0]["is_continuous_mask"].tolist()
    assert batch["input_ids"][0, :3].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(batch["text_input_ids"][0, 3:], rows[0]["text_input_ids"])


# --- Kimi-Audio's tiktoken tokenizer, converted to a fast tokenizer (tests/ports/kimi_tokenizer_fixture.py) ---

KIMI_BASE = len(ranks_for(KIMI_WORDS))  # 325 base tokens in the tiny fixture (151643 in the released tokenizer)
# The ids of the released tokenizer (151643 base tokens), as integrations report them.
RELEASED = {"<|im_msg_end|>": 151645, "<|im_media_begin|>": 151661, "<|im_media_end|>": 151663,
            "<|im_kimia_text_blank|>": 151666, "<|im_kimia_text_eos|>": 151667, "<|im_kimia_user_msg_start|>": 151670,
            "<|im_kimia_assistant_msg_start|>": 151671, "<|im_kimia_speech_ct_id|>": 151675}
TEXTS = [
    "What emotion is this? neutral, happy, sad or angry. It costs $3.50 (1,234 items) at 12:30pm!",
    "I'm sure you're right; they've said we'll go, he'd know and it's HER's: DON'T, Won'T",
    "line one\nline two\r\n\n\nindented   by  three\t\ttabs   \n  \n trailing spaces   ",
    "你好，情绪如何？ 情绪 Привет, мир! مرحبا 😀🎉👍🏽 naïve café ﬁne",
    "<|im_kimia_user_msg_start|>What emotion<|im_kimia_text_blank|> is this?<|im_msg_end|>\n<|im_media_begin|>"
    "<|im_media_end|><|im_kimia_speech_ct_id|><|im_kimia_assistant_msg_start|>happy<|im_kimia_text_eos|>",
    " neutral neutral  happy   sad\n\nangry",
    "",
]


@pytest.fixture(scope="module")
def kimi_dir(tmp_path_factory):
    return write_kimi_tokenizer(tmp_path_factory.mktemp("kimi_tok"))


@pytest.fixture(scope="module")
def kimi_tok(kimi_dir):
    return prompts.load_tokenizer(kimi_dir)


def tiktoken_reference(directory, monkeypatch):
    """tiktoken's own Encoding of the same files: ranks read by tiktoken.load.load_tiktoken_bpe, the same split
    pattern, the added tokens of tokenizer_config.json as special tokens."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken caches files by path; tmp paths are reused across runs
    ranks = load_tiktoken_bpe(str(directory / "tiktoken.model"))
    added = json.loads((directory / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    return tiktoken.Encoding("kimi_fixture", pat_str=prompts.KIMI_PATTERN, mergeable_ranks=ranks,
                             special_tokens={v["content"]: int(k) for k, v in added.items()})


@pytest.mark.parametrize("text", TEXTS)
def test_kimi_tokenizer_encodes_as_tiktoken_does(kimi_dir, kimi_tok, monkeypatch, text):
    reference = tiktoken_reference(kimi_dir, monkeypatch)
    want = reference.encode(text, allowed_special="all")
    assert kimi_tok.encode(text, add_special_tokens=False) == want
    assert kimi_tok(text)["input_ids"] == want  # no BOS/EOS either way
    assert kimi_tok.decode(want) == reference.decode(want) == text


def test_kimi_tokenizer_merges_the_fixture_words_and_splits_digits(kimi_tok):
    ranks = ranks_for(KIMI_WORDS)
    for word in KIMI_WORDS:
        assert kimi_tok.encode(word, add_special_tokens=False) == [ranks[word.encode()]], word
    assert kimi_tok.encode("What emotion is this?", add_special_tokens=False) == [294, 301, 303, 307, 30]
    assert kimi_tok.encode("2024", add_special_tokens=False) == [17, 15, 17, 19]  # Qwen2's \p{N}: one digit each
    assert kimi_tok.bos_token is None and kimi_tok.eos_token is None


def test_kimi_control_tokens_sit_at_the_released_offsets(kimi_tok):
    assert {t: 151643 + off for t, off in prompts.KIMI_CONTROL_OFFSETS.items()} == RELEASED
    want = {t: KIMI_BASE + off for t, off in prompts.KIMI_CONTROL_OFFSETS.items()}
    assert prompts.check_kimi_control_ids(kimi_tok) == want
    assert prompts.kimi_audio_tokens(kimi_tok) == want
    assert want["<|im_msg_end|>"] == KIMI_BASE + 2 == 327 and want["<|im_kimia_speech_ct_id|>"] == 357
    assert len(kimi_tok) == KIMI_BASE + 256
    assert kimi_tok.pad_token == "<|im_kimia_text_blank|>" and kimi_tok.pad_token_id == KIMI_BASE + 23
    assert kimi_tok.convert_ids_to_tokens(KIMI_BASE + 255) == "<|reserved_token_255|>"
    assert kimi_tok.decode([261, KIMI_BASE + 24], skip_special_tokens=True) == "neutral"


def test_kimi_prompt_streams_with_the_converted_tokenizer(kimi_tok):
    got = prompts.kimi_audio(kimi_tok, "What emotion is this?", [900, 901])
    t = {tok: KIMI_BASE + off for tok, off in prompts.KIMI_CONTROL_OFFSETS.items()}
    blank = t["<|im_kimia_text_blank|>"]
    assert got["input_ids"].tolist() == [t["<|im_kimia_user_msg_start|>"], *[blank] * 5, t["<|im_media_begin|>"],
                                         900, 901, t["<|im_media_end|>"], t["<|im_kimia_speech_ct_id|>"],
                                         t["<|im_msg_end|>"], t["<|im_kimia_assistant_msg_start|>"]]
    assert got["text_input_ids"].tolist() == [blank, 294, 301, 303, 307, 30, *[blank] * 7]
    batch = prompts.tokenize(kimi_tok, ["What", "What emotion is this?"])
    assert batch["input_ids"][0].tolist() == [blank] * 4 + [294]


def test_kimi_tokenizer_fills_gaps_in_the_reserved_ids(tmp_path, monkeypatch):
    """Only the control tokens listed: the placeholders in between keep each at its listed id."""
    directory = write_kimi_tokenizer(tmp_path, fillers=False)
    tok = prompts.load_tokenizer(directory)
    assert prompts.check_kimi_control_ids(tok)["<|im_kimia_speech_ct_id|>"] == KIMI_BASE + 32
    assert len(tok) == KIMI_BASE + 33
    assert tok.convert_ids_to_tokens(KIMI_BASE + 3) == f"<|reserved_token_{KIMI_BASE + 3}|>"
    text = TEXTS[4]
    assert tok.encode(text, add_special_tokens=False) == tiktoken_reference(directory, monkeypatch).encode(
        text, allowed_special="all")


def test_kimi_tokenizer_takes_a_named_pad_token_that_exists(tmp_path):
    directory = write_kimi_tokenizer(tmp_path)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<|reserved_token_0|>",
                                                                 "bos_token": "<|reserved_token_1|>",
                                                                 "eos_token": "[EOS-not-in-vocab]"}))
    tok = prompts.load_tokenizer(directory)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token) == (KIMI_BASE, KIMI_BASE + 1, None)
    assert len(tok) == KIMI_BASE + 256  # the missing eos_token was not appended as a new token
    assert tok.encode("What", add_special_tokens=False) == [294]
    config["pad_token"] = {"content": "<|no_such_token|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert prompts.load_tokenizer(directory).pad_token == "<|im_kimia_text_blank|>"


def test_kimi_tokenizer_refuses_a_moved_control_token(tmp_path):
    directory = write_kimi_tokenizer(tmp_path)
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    added = config["added_tokens_decoder"]
    a, b = str(KIMI_BASE + 20), str(KIMI_BASE + 21)  # <|im_media_end|> one place up
    added[a], added[b] = added[b], added[a]
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(
            f"<|im_media_end|> has id {KIMI_BASE + 21}, expected {KIMI_BASE + 20} (base {KIMI_BASE} + 20)")) as e:
        prompts.load_tokenizer(directory)
    assert "im_msg_end" not in str(e.value)  # only the moved one is named


def test_kimi_tokenizer_refuses_added_tokens_off_their_ids(tmp_path):
    directory = write_kimi_tokenizer(tmp_path)
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["added_tokens_decoder"][str(KIMI_BASE + 5)]["content"] = "<|im_msg_end|>"  # listed twice
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(f"'<|im_msg_end|>' has id {KIMI_BASE + 2}, config says "
                                                   f"{KIMI_BASE + 5}")):
        prompts.load_tokenizer(directory)
    config["added_tokens_decoder"]["7"] = {"content": "<|low|>"}
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"\(7, '<\|low\|>'\)\] have ids below the 325 base tokens"):
        prompts.load_tokenizer(directory)


@pytest.mark.parametrize(("line", "why"), [("bm90IGJhc2U2NA 3", "Incorrect padding|base64"), ("IQ==", "1 fields"),
                                           ("IQ== three", "invalid literal")])
def test_kimi_tokenizer_refuses_a_malformed_tiktoken_line(tmp_path, line, why):
    directory = write_kimi_tokenizer(tmp_path)
    path = directory / "tiktoken.model"
    lines = path.read_text().splitlines()
    lines[4] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} line 5: expected '<base64 token> <integer rank>'"
                                         rf".*({why})"):
        prompts.load_tokenizer(directory)


def test_kimi_tokenizer_refuses_repeated_or_missing_ranks(tmp_path):
    directory = write_kimi_tokenizer(tmp_path)
    path = directory / "tiktoken.model"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:3], lines[3].split()[0] + " 2", *lines[4:]]) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} line 4: rank 2 repeats \(first on line 3\)"):
        prompts.read_tiktoken_ranks(path)
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match=r"ranks are not 0\.\.323 \(missing \[3\]\)"):
        prompts.read_tiktoken_ranks(path)


def test_load_tokenizer_names_both_files_when_neither_is_there(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"neither tokenizer.json \(a transformers fast tokenizer\), "
                                                r"tiktoken.model \(a tiktoken BPE vocabulary.* nor tekken.json"):
        prompts.load_tokenizer(tmp_path)
    (tmp_path / "tiktoken.model").write_text("IQ== 0\n")
    with pytest.raises(FileNotFoundError, match="tiktoken.model but no tokenizer_config.json"):
        prompts.load_tokenizer(tmp_path)


# --- Qwen2-Audio: ChatML with its "Audio 1:" layout (tests/ports/qwen2_audio_tokenizer_fixture.py) ---

QUESTION = "What emotion is this?"


@pytest.fixture(scope="module")
def qwen2_audio_tok(tmp_path_factory):
    return prompts.load_tokenizer(write_qwen2_audio_tokenizer(tmp_path_factory.mktemp("qwen2_audio_tok")))


@pytest.mark.parametrize("seconds", [1.0, 7.3, 30.0])
def test_qwen2_audio_prompt_is_the_processors(qwen2_audio_tok, seconds):
    """transformers' Qwen2AudioProcessor renders its chat template (the hub's, per transformers' copy) for a user
    turn of one audio then the question, and expands <|AUDIO|> for the clip: the same text and ids as ours with
    the count from ports.features."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128),
                                    tokenizer=qwen2_audio_tok)
    audio = clip(seconds, seed=3)
    conversation = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                                 {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    want = processor(text=text, audio=[audio], sampling_rate=16000, return_tensors="np")["input_ids"]
    n = int(features.qwen2_audio([audio])["num_audio_tokens"][0])
    ours = prompts.qwen2_audio(QUESTION, n)
    assert ours == text.replace("<|AUDIO|>", "<|AUDIO|>" * n)
    batch = prompts.tokenize(qwen2_audio_tok, [ours])
    assert batch["input_ids"].tolist() == want.tolist()
    ids = batch["input_ids"][0].tolist()
    assert ids.count(QWEN2_AUDIO_IDS["<|AUDIO|>"]) == n == design_count(audio.size)
    head = [QWEN2_AUDIO_IDS["<|audio_bos|>"], *[QWEN2_AUDIO_IDS["<|AUDIO|>"]] * n, QWEN2_AUDIO_IDS["<|audio_eos|>"]]
    start = ids.index(QWEN2_AUDIO_IDS["<|audio_bos|>"])
    assert ids[start:start + n + 2] == head
    assert ids[-3:] == [QWEN2_AUDIO_IDS["<|im_start|>"], *qwen2_audio_tok.encode("assistant\n")]


def test_qwen2_audio_stops_and_pads_at_its_ids(qwen2_audio_tok):
    assert prompts.stop_token_ids(qwen2_audio_tok) == (151645, 151643)  # eos <|im_end|>, then <|endoftext|>
    batch = prompts.tokenize(qwen2_audio_tok, [prompts.qwen2_audio("Hi", 1), prompts.qwen2_audio("Hi", 3)])
    assert batch["input_ids"][0, :2].tolist() == [151643, 151643] and batch["attention_mask"][0, :2].sum() == 0


# --- Voxtral: mistral-common's instruct layout through the converted tekken tokenizer ---

VOXTRAL_TEXTS = [QUESTION, *TEXTS[:4], " neutral neutral  happy   sad\n\nangry", "feeling  feel 2024"]


@pytest.fixture(scope="module")
def tekken_dir(tmp_path_factory):
    return write_tekken(tmp_path_factory.mktemp("tekken"))


@pytest.fixture(scope="module")
def tekken_tok(tekken_dir):
    return prompts.load_tokenizer(tekken_dir)


def tiktoken_tekken(directory):
    """An independent reading of tekken.json, the one mistral-common's Tekkenizer makes: the first
    default_vocab_size - default_num_special_tokens BPE tokens as tiktoken ranks, the config's pattern, no
    special tokens (they are placed by id, never read from text); a token's id is its rank + the special count."""
    import tiktoken
    data = json.loads((directory / "tekken.json").read_text())
    n_special, size = data["config"]["default_num_special_tokens"], data["config"]["default_vocab_size"]
    ranks = {base64.b64decode(t["token_bytes"]): t["rank"] for t in data["vocab"][:size - n_special]}
    encoding = tiktoken.Encoding("tekken_fixture", pat_str=data["config"]["pattern"], mergeable_ranks=ranks,
                                 special_tokens={})
    return lambda text: [n_special + i for i in encoding.encode(text, disallowed_special=())]


@pytest.mark.parametrize("text", VOXTRAL_TEXTS)
def test_tekken_tokenizer_encodes_as_tiktoken_does(tekken_dir, tekken_tok, text):
    want = tiktoken_tekken(tekken_dir)(text)
    assert tekken_tok.encode(text, add_special_tokens=False) == want
    assert tekken_tok(text)["input_ids"] == want  # no BOS either way: the prompt holds it
    assert tekken_tok.decode(want) == text


def test_tekken_tokenizer_layout(tekken_tok):
    """Special tokens at their ids, BPE tokens at 1000 + rank, the file's tokens past default_vocab_size cut."""
    words = ranks_for_tekken(TEKKEN_WORDS)
    assert len(tekken_tok) == 1000 + len(words)
    for i, token in SPECIAL_TOKENS.items():
        assert tekken_tok.convert_tokens_to_ids(token) == i
    assert tekken_tok.convert_ids_to_tokens(20) == "<SPECIAL_20>"
    assert tekken_tok.encode(" emotion", add_special_tokens=False) == [1000 + words[b" emotion"]]
    assert tekken_tok.encode(" feel", add_special_tokens=False) == [1000 + b for b in b" feel"]  # beyond: bytes
    assert (tekken_tok.bos_token_id, tekken_tok.eos_token_id, tekken_tok.pad_token_id, tekken_tok.unk_token_id) == (
        1, 2, 11, 0)
    assert prompts.stop_token_ids(tekken_tok) == (2,)  # </s>, the tokenizer's eos


@pytest.mark.parametrize("seconds", [1.0, 31.0])
def test_voxtral_prompt_ids(tekken_dir, tekken_tok, seconds):
    """With the count from ports.features: BOS, [INST], [BEGIN_AUDIO], [AUDIO] * n, the question's own tokens,
    [/INST] (mistral-common's InstructTokenizerV7 layout, written out here with tiktoken for the question)."""
    n = int(features.voxtral([clip(seconds)])["num_audio_tokens"][0])
    assert n == 375 * (1 if seconds <= 30 else 2)
    batch = prompts.tokenize(tekken_tok, [prompts.voxtral(QUESTION, n)])
    assert batch["input_ids"].tolist() == [[1, 3, 25, *[24] * n, *tiktoken_tekken(tekken_dir)(QUESTION), 4]]


@pytest.mark.parametrize("seconds", [1.0, 31.0])
def test_voxtral_prompt_ids_are_mistral_commons(tekken_dir, tekken_tok, seconds):
    """mistral-common itself encodes the chat message (the clip as an audio chunk, then the question)."""
    audio = pcm16(clip(seconds))
    want = mistral_common_chat(tekken_dir / "tekken.json", audio, QUESTION).tokens
    n = int(features.voxtral([audio])["num_audio_tokens"][0])
    assert prompts.tokenize(tekken_tok, [prompts.voxtral(QUESTION, n)])["input_ids"].tolist() == [want]


@pytest.mark.parametrize("text", VOXTRAL_TEXTS)
def test_tekken_tokenizer_is_mistral_commons(tekken_dir, tekken_tok, text):
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    want = Tekkenizer.from_file(tekken_dir / "tekken.json").encode(text, bos=False, eos=False)
    assert tekken_tok.encode(text, add_special_tokens=False) == want


def test_tekken_tokenizer_on_the_real_131k_vocabulary(tmp_path):
    """The vocabulary mistral-common ships (150000 BPE tokens cut at 131072 ids), in Voxtral's layout: our
    conversion against mistral-common's Tekkenizer on varied text, and a whole prompt against its chat encoding."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    directory = write_tekken_from_wheel(tmp_path)
    tok = prompts.load_tokenizer(directory)
    assert len(tok) == 131072
    reference = Tekkenizer.from_file(directory / "tekken.json")
    for text in [*VOXTRAL_TEXTS, TEXTS[4], "  leading, trailing  \n", "x" * 300, "1234567890 3.14159 ½ ²"]:
        assert tok.encode(text, add_special_tokens=False) == reference.encode(text, bos=False, eos=False), text
    audio = pcm16(clip(1.0))
    want = mistral_common_chat(directory / "tekken.json", audio, QUESTION).tokens
    assert prompts.tokenize(tok, [prompts.voxtral(QUESTION, 375)])["input_ids"].tolist() == [want]


def test_voxtral_batch_is_left_padded_with_pad(tekken_tok):
    batch = prompts.tokenize(tekken_tok, [prompts.voxtral("What", 375), prompts.voxtral(QUESTION, 375)])
    short = len(batch["input_ids"][0]) - int(batch["attention_mask"][0].sum())
    assert short == len(tekken_tok.encode(QUESTION, add_special_tokens=False)) - 1 > 0
    assert batch["input_ids"][0, :short].tolist() == [11] * short  # <pad>
    assert (batch["input_ids"] == 24).sum(1).tolist() == [375, 375]


def test_voxtral_refuses_a_system_prompt_and_special_text():
    with pytest.raises(ValueError, match="Voxtral takes no system prompt with audio"):
        prompts.voxtral("Hi", 375, system="Be brief.")
    with pytest.raises(ValueError, match=re.escape("must not hold special-token text; it holds ['[INST]', '</s>']")):
        prompts.voxtral("Say [INST] then </s>", 375)
    assert prompts.voxtral("[a] <b> [Note]", 1).endswith("[a] <b> [Note][/INST]")  # not a special token's form


def test_load_tokenizer_reads_tekken_json_first(tmp_path):
    """A tokenizer.json beside tekken.json is not used: mistral-common (the reference) reads tekken.json."""
    write_qwen2_audio_tokenizer(tmp_path)
    write_tekken(tmp_path)
    tok = prompts.load_tokenizer(tmp_path)
    assert tok.convert_tokens_to_ids("[AUDIO]") == 24 and tok.convert_tokens_to_ids("<|AUDIO|>") == tok.unk_token_id


def test_tekken_tokenizer_needs_its_named_tokens(tmp_path):
    write_tekken(tmp_path)
    path = tmp_path / "tekken.json"
    data = json.loads(path.read_text())
    data["special_tokens"][11]["token_str"] = "[PAD]"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(f"{path} lacks the special tokens ['<pad>']")):
        prompts.load_tokenizer(tmp_path)
