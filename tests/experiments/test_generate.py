"""experiments.generate on a tiny random Qwen2.5-Omni thinker (tests/experiments/tiny_reference.py): its answers
equal a plain greedy loop of full forward passes over the study's own batch of the same clip (no cache, another
bucket and batch size), unedited and under the steering gain; a mask of no neuron leaves the answer as it is;
bad inputs are refused by name. The script defines flags, so it runs as a subprocess (tests/experiments/
test_scripts.py)."""

import functools
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

import esn_jax
from configs.study import get_config
from esn_jax.data import audio, pipeline
from experiments.study import adapters
from tests.experiments import tiny_reference

N = 6  # max_new_tokens


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The stand-in model, a 1-s 22.05 kHz stereo tone + noise, and masks.npz with random masks except an empty
    one for happy (bool [S=2, K=1, 1 + R=1, E=4, L=2, I=64])."""
    root = tmp_path_factory.mktemp("generate")
    ref = tiny_reference.build(root / "ref", seed=2)  # a seed whose answers have text (asserted below)
    rng = np.random.default_rng(0)
    t = np.arange(22050) / 22050
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    soundfile.write(root / "clip.wav", np.stack([tone, 0.5 * tone], 1).astype(np.float32), 22050)
    masks = rng.random((2, 1, 2, 4, 2, 64)) < 0.3
    masks[1, 0, 0, tiny_reference.LABELS.index("happy")] = False
    np.savez(root / "masks.npz", masks=masks, selectors=np.array(["lap", "cas"]), ks=np.array([0.01]))
    return {"root": root, "ref": ref, "clip": root / "clip.wav", "masks": masks}


def generate(files, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.generate", f"--checkpoint={files['ref']}",
                           f"--max_new_tokens={N}", *map(str, args)], capture_output=True, text=True)


def answers(stdout: str) -> dict[str, str]:
    """{label in parentheses: text} of the ``answer (...): text`` lines, without the cut note."""
    return {m[1]: m[2] for m in re.finditer(r"^answer \((.*?)\): (.*?)(?: \[cut at .*\])?$", stdout, re.M)}


@pytest.fixture(scope="module")
def study_batch(files):
    """The model as the study loads it and the study's batch of the clip: bucket 4 s, 8 rows (the clip repeated),
    as experiments/study/adapters.py batches the eval split (the script makes a 1-s bucket of one row)."""
    cfg = get_config(f"local,checkpoint={files['ref']},buckets=4")
    model = adapters.load_model(cfg)
    wave, _ = audio.decode(files["clip"])
    return model, adapters.model_inputs(next(adapters.batches(model, [pipeline.Example(wave, 0, "", "clip")], cfg)))


def greedy(study_batch, edits=None) -> str:
    """The answer by full forward passes: argmax at the last prompt or answer position, appended, again. The
    answer's tokens are text wherever they land (embed_answer: a generated <|AUDIO|> is no placeholder), and the
    positions are laid out at their final width: those after the one read are causally masked, so what they hold
    does not matter, and one compiled forward serves every step."""
    model, batch = study_batch
    batch = dict(batch)
    mask = batch.pop("attention_mask")
    apply = functools.partial(model.module.apply, {"params": model.params})
    prompt = apply(**batch, method="embed_inputs")  # [B, T, H]
    b, t = mask.shape
    mask = np.concatenate([mask, np.ones((b, N), mask.dtype)], 1)
    forward = jax.jit(lambda ids: apply(inputs_embeds=jnp.concatenate(
        [prompt, apply(ids, method="embed_answer")], 1), attention_mask=mask, interventions=edits))
    # ChatML's end of turn and the base model's end of text (the tiny tokenizer has no eos token)
    ends = {model.tokenizer.convert_tokens_to_ids(token) for token in ("<|im_end|>", "<|endoftext|>")}
    answer = np.zeros((b, N), np.int32)
    out = []
    while len(out) < N and not ends & set(out):
        out.append(int(np.argmax(forward(answer)[0, t - 1 + len(out)])))
        answer[:, len(out) - 1] = out[-1]
    return model.tokenizer.decode(out, skip_special_tokens=True).strip()


def test_answers_unedited_and_steered(files, study_batch):
    sad = files["masks"][1, 0, 0, tiny_reference.LABELS.index("sad")]
    want_plain, want_sad = greedy(study_batch), greedy(study_batch, esn_jax.gain(sad, 20.0))
    assert want_plain and want_plain != want_sad  # else the comparisons below could not fail

    run = generate(files, f"--audio={files['clip']}")
    assert run.returncode == 0, run.stderr
    assert "(1.00 s, downmixed, resampled)" in run.stdout
    assert f"question: {tiny_reference.QUESTION}" in run.stdout
    assert answers(run.stdout) == {"unedited": want_plain}, run.stdout

    masks = f"--masks={files['root'] / 'masks.npz'}"
    run = generate(files, f"--audio={files['clip']}", masks, "--emotion=sad", "--alpha=20")
    assert run.returncode == 0, run.stderr
    assert answers(run.stdout) == {"unedited": want_plain,
                                   f"sad ESNs x(1+20), cas k=0.01, {int(sad.sum())} neurons": want_sad}, run.stdout

    run = generate(files, f"--audio={files['clip']}", masks, "--emotion=happy", "--alpha=20", "--question=emotion?")
    assert run.returncode == 0, run.stderr
    assert "question: emotion?" in run.stdout
    got = answers(run.stdout)
    assert got["unedited"] == got["happy ESNs x(1+20), cas k=0.01, 0 neurons"], run.stdout


@pytest.mark.parametrize("case, message", [
    ("not_audio", r"not_audio.wav: unreadable"),
    ("silent", r"silent.wav: silent: peak amplitude 0.0e\+00"),
    ("too_long", r"long.wav: too long: 301.0 s; the model \(qwen2_5_omni\) takes clips of at most 300 s"),
    ("selector", r"masks.npz has no selector 'mad'; it has \['lap', 'cas'\]"),
    ("alpha", r"--alpha=-2: the gain 1 \+ alpha must be >= 0"),
])
def test_bad_inputs_are_refused_by_name(files, case, message):
    root = files["root"]
    clip, extra = files["clip"], []
    if case == "not_audio":
        clip = root / "not_audio.wav"
        clip.write_text("these are words, not audio\n")
    elif case == "silent":
        clip = root / "silent.wav"
        soundfile.write(clip, np.zeros(16000, np.int16), 16000)
    elif case == "too_long":  # Qwen2.5-Omni's features take at most 300 s
        clip = root / "long.wav"
        soundfile.write(clip, (0.1 * np.sin(np.arange(301 * 8000) / 10)).astype(np.float32), 8000)
    elif case == "selector":
        extra = [f"--masks={root / 'masks.npz'}", "--emotion=sad", "--selector=mad"]
    else:
        extra = ["--alpha=-2"]
    run = generate(files, f"--audio={clip}", *extra)
    assert run.returncode != 0
    assert re.search(message, run.stderr), run.stderr[-2000:]
    assert "Traceback" not in run.stderr
