r"""Writes an intervened model: ablation or gain on one emotion's neurons, folded into down_proj's weights.

  python -m experiments.export --masks=workdir/study/masks.npz --selector=cas --k=0.01 --emotion=happy \
      --alpha=-1 --out=/tmp/ablated [--hf_out=/tmp/ablated_hf] [--checkpoint=esn_jax/reference/mini_lalm]

Scaling neuron n of layer l by 1 + α equals scaling row n of that layer's down_proj kernel (DESIGN §2),
so the edited model is an ordinary checkpoint: ours (``ports.load``) and, with --hf_out, the Hugging Face
layout that transformers and any stack serving it can load. α = -1 ablates.

--checkpoint is our checkpoint (``port.json``) or a mini-LALM directory (:mod:`esn_jax.reference.mini_lalm`,
the default): its edited language model is no longer the packaged one, so the whole Audio Flamingo 3 model
is written. The source's tokenizer and ``reference.json`` go beside our checkpoint (the study runs it with
``--checkpoint=OUT``), the tokenizer beside the Hugging Face layout.
"""

import json
from pathlib import Path

import numpy as np
from absl import app, flags

import ports
from esn_jax import interventions
from esn_jax.reference import META, mini_lalm
from experiments.study.evidence import esn_mask
from ports import prompts

_CHECKPOINT = flags.DEFINE_string("checkpoint", str(mini_lalm.DEFAULT_DIR),
                                  "Our checkpoint directory or a mini-LALM directory to edit.")
_MASKS = flags.DEFINE_string("masks", None, "masks.npz of a study run (bool [S, K, 1 + R, E, L, I]).")
_SELECTOR = flags.DEFINE_string("selector", "cas", "Which selector's masks.")
_K = flags.DEFINE_float("k", 0.01, "Which k (as in the study's ks).")
_EMOTION = flags.DEFINE_string("emotion", None, "Label word (from reference.json) or index of the emotion.")
_ALPHA = flags.DEFINE_float("alpha", -1.0, "Gain 1 + alpha on the neurons; -1 ablates.")
_OUT = flags.DEFINE_string("out", None, "Where to write our checkpoint.")
_HF_OUT = flags.DEFINE_string("hf_out", None, "Also write the Hugging Face layout here.")
flags.mark_flags_as_required(["masks", "emotion", "out"])


def load(checkpoint: Path):
    """-> ``(model name, module, params, tokenizer or None, reference.json as a dict)`` of ``checkpoint``."""
    if mini_lalm.is_mini_lalm(checkpoint):
        module, params, tokenizer, meta = mini_lalm.load(checkpoint)
        return "audio_flamingo3", module, params, tokenizer, meta
    model_name = json.loads((checkpoint / ports.checkpoint.META).read_text())["model"]
    module, params = ports.load(checkpoint)
    meta = json.loads((checkpoint / META).read_text()) if (checkpoint / META).exists() else {}
    tokenizer = prompts.load_tokenizer(checkpoint) if (checkpoint / "tokenizer_config.json").exists() else None
    return model_name, module, params, tokenizer, meta


def main(argv):
    del argv
    model_name, module, params, tokenizer, meta = load(Path(_CHECKPOINT.value))
    mask = esn_mask(_MASKS.value, _SELECTOR.value, _K.value, _EMOTION.value, list(meta.get("labels", [])))
    scale = np.asarray(interventions.gain(mask, _ALPHA.value)["gate_act"]["scale"])
    edited = ports.sites.fold(params, scale)
    out = ports.save(_OUT.value, model_name, module.config, edited)
    hf_out = ports.export(model_name, module.config, edited, _HF_OUT.value) if _HF_OUT.value else None
    if meta:
        (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    for path in (out, hf_out):
        if path and tokenizer is not None:
            tokenizer.save_pretrained(path)
    print(f"wrote {out} ({int(mask.sum())} neurons, gain {1 + _ALPHA.value:g})" + (f" and {hf_out}" if hf_out else ""))


if __name__ == "__main__":
    app.run(main)
