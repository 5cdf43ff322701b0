r"""Converts a checkpoint into an esn-jax checkpoint: a Hugging Face directory, a GGUF file or a CTranslate2 model.

  python -m experiments.convert --model=qwen2 --hf_dir=/ckpt/Qwen2.5-7B --out=/ckpt/qwen2_5_7b_jax \
      [--dtype=float32|bfloat16] [--overwrite]
  python -m experiments.convert --model=llama --gguf=/models/SmolLM2-135M-Instruct.Q4_1.gguf --out=/ckpt/smollm2
  python -m experiments.convert --model=whisper_encoder --ct2_dir=/models/faster-whisper-tiny.en --out=/ckpt/tiny_en
  python -m experiments.convert --model=glm4_voice_tokenizer --hf_dir=/ckpt/glm-4-voice-tokenizer \
      --out=/ckpt/glm4_voice_tokenizer_jax
  python -m experiments.convert --model=qwen2_audio --hf_dir=/ckpt/Qwen2-Audio-7B-Instruct --out=/ckpt/qwen2_audio_jax
  python -m experiments.convert --model=voxtral --hf_dir=/ckpt/Voxtral-Mini-3B-2507 --out=/ckpt/voxtral_jax

A Hugging Face directory's tokenizer is not copied: the study reads it there (``tokenizer=``, configs/study.py).
"""

from absl import app, flags

import ports
from ports.convert import DTYPES

_MODEL = flags.DEFINE_enum("model", None, sorted(ports.MODELS), "Which port the checkpoint is for.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Directory with config.json and *.safetensors.")
_GGUF = flags.DEFINE_string("gguf", None, "A llama.cpp GGUF file (--model=llama).")
_CT2_DIR = flags.DEFINE_string("ct2_dir", None, "A CTranslate2 Whisper model directory (--model=whisper_encoder).")
_OUT = flags.DEFINE_string("out", None, "Where to write the converted checkpoint (written atomically).")
_DTYPE = flags.DEFINE_enum("dtype", None, sorted(DTYPES), "Parameter dtype; default: the checkpoint's own "
                           "(float32 for a dequantised GGUF).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
flags.mark_flags_as_required(["model", "out"])
flags.mark_flags_as_mutual_exclusive(["hf_dir", "gguf", "ct2_dir"], required=True)

# Which --model each non-Hugging-Face source converts to.
_SOURCE_MODEL = {"gguf": "llama", "ct2_dir": "whisper_encoder"}


def main(argv):
    del argv
    kwargs = {"dtype": _DTYPE.value, "overwrite": _OVERWRITE.value}
    for source, value in (("gguf", _GGUF.value), ("ct2_dir", _CT2_DIR.value)):
        if value is not None and _MODEL.value != _SOURCE_MODEL[source]:
            raise app.UsageError(f"--{source} converts --model={_SOURCE_MODEL[source]}, not --model={_MODEL.value}")
    if _GGUF.value is not None:
        out = ports.convert_gguf(_GGUF.value, _OUT.value, **kwargs)
    elif _CT2_DIR.value is not None:
        out = ports.convert_ct2(_CT2_DIR.value, _OUT.value, **kwargs)
    else:
        out = ports.convert(_HF_DIR.value, _OUT.value, _MODEL.value, **kwargs)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
