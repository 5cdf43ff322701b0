"""Prompt builders: the template text, the token ids through a tokenizer loaded from a directory, the
placeholder count from the features module, and left padding."""

import json

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from ports import features, prompts
from ports.audio import output_lengths

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
    omni = prompts.qwen2_5_omni("Hi", 2)
    assert omni == ("<|im_start|>system\nYou are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, "
                    "capable of perceiving auditory and visual inputs, as well as generating text and speech."
                    "<|im_end|>\n<|im_start|>user\n<|audio_bos|><|AUDIO|><|AUDIO|><|audio_eos|>Hi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert prompts.audio_flamingo3("Hi", 2) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                                "<|im_start|>user\n<sound><sound>Hi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="n_audio=0"):
        prompts.audio_flamingo3("Hi", 0)


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
