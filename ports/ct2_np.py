"""Reading a CTranslate2 Whisper model (``model.bin``) as numpy: the encoder only, into :mod:`ports.audio`.

``model.bin`` (binary format version 6, little-endian): ``u32`` version, the spec name, ``u32`` revision,
``u32`` variable count, then per variable its name, ``u8`` rank, ``u32`` × rank shape, ``u8`` dtype id,
``u32`` byte count and the bytes; then ``u32`` alias count and (alias, target) name pairs. A name is a
``u16`` length (with the trailing NUL) and UTF-8 bytes. The file is memory-mapped; a tensor is only
read when asked for.

The encoder is Whisper's (:class:`ports.audio.AudioEncoder`, full-window regime, learned positions, no
pooling). CTranslate2 fuses each layer's q/k/v into one ``linear_0`` [3D, D] whose k bias is zeros
(Whisper's k_proj has none); the table slices it apart. The decoder's variables are skipped by name.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from ports.audio import CONV, AudioEncoderConfig
from ports.config import UnsupportedConfigError
from ports.rules import LAYER, LINEAR, ConversionError, Rule
from ports.safetensors_np import CheckpointFileError

MODEL_FILE = "model.bin"
VERSION = 6
WHISPER_SPEC = "WhisperSpec"
# CTranslate2's DataType enum order (include/ctranslate2/types.h).
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, ml_dtypes.bfloat16)
_FLOATS = {np.dtype(t) for t in (np.float32, np.float16, ml_dtypes.bfloat16)}
IGNORE = ("decoder/*", "encoder/num_heads")  # the text decoder; the head count is read into the config


class CTranslate2Checkpoint:
    """The variables of one ``model.bin``: ``keys``/``shape``/``read`` as :class:`SafetensorsCheckpoint`."""

    def __init__(self, directory: str | Path):
        self.source = Path(directory) / MODEL_FILE
        if not self.source.is_file():
            raise FileNotFoundError(f"{Path(directory)} has no {MODEL_FILE}; expected a CTranslate2 model directory")
        self._data = np.memmap(self.source, np.uint8, mode="r")
        self._offset = 0
        try:
            version = self._unpack("I")
            if version != VERSION:
                raise CheckpointFileError(f"{self.source} is CTranslate2 binary format version {version}; the reader "
                                          f"takes version {VERSION}")
            self.spec = self._string()
            self.revision = self._unpack("I")
            self._entries: dict[str, tuple[tuple[int, ...], np.dtype, int]] = {}
            for _ in range(self._unpack("I")):
                name = self._string()
                shape = tuple(self._unpack("I") for _ in range(self._unpack("B")))
                kind, size = self._unpack("B"), self._unpack("I")
                if kind >= len(_DTYPES):
                    raise CheckpointFileError(f"{self.source}: variable {name!r} has unknown dtype id {kind}")
                dtype = np.dtype(_DTYPES[kind])
                if size != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                    raise CheckpointFileError(f"{self.source}: variable {name!r} has {size} bytes; its shape {shape} "
                                              f"and dtype {dtype} need {int(np.prod(shape)) * dtype.itemsize}")
                self._entries[name] = (shape, dtype, self._offset)
                self._skip(size)
        except struct.error:
            raise CheckpointFileError(f"{self.source} is truncated: it ends inside its header or variables "
                                      f"({self._data.size} bytes)") from None

    def _unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self._data, self._offset)
        self._offset += struct.calcsize(fmt)
        return value

    def _skip(self, size: int) -> None:
        if self._offset + size > self._data.size:
            raise struct.error("past the end")
        self._offset += size

    def _string(self) -> str:
        n = self._unpack("H")
        self._skip(n)
        return bytes(self._data[self._offset - n:self._offset - 1]).decode("utf-8")

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][0]

    def dtype(self, key: str) -> np.dtype:
        return self._entries[key][1]

    def read(self, key: str) -> np.ndarray:
        shape, dtype, offset = self._entries[key]
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self._data, dtype, count, offset).reshape(shape)


def encoder_config(ckpt: CTranslate2Checkpoint) -> AudioEncoderConfig:
    """The Whisper encoder's sizes, read off its variables; refuses another spec and quantised weights."""
    if ckpt.spec != WHISPER_SPEC:
        raise UnsupportedConfigError(f"{ckpt.source} holds a CTranslate2 {ckpt.spec}; the reader takes a "
                                     f"{WHISPER_SPEC}")
    names = ckpt.keys()
    quantised = sorted(k for k in names if k.startswith("encoder/") and ckpt.dtype(k) not in _FLOATS
                       and k not in IGNORE)
    if quantised:
        raise UnsupportedConfigError(f"{ckpt.source} stores encoder weights as integers (a quantised CTranslate2 "
                                     f"model: {quantised[:3]}...); the reader takes float32/float16/bfloat16 models")
    needed = ["encoder/conv1/weight", "encoder/num_heads", "encoder/position_encodings/encodings",
              "encoder/layer_0/ffn/linear_0/weight"]
    missing = [k for k in needed if k not in names]
    if missing:
        raise ConversionError(f"{ckpt.source}: no {missing}; expected a Whisper encoder")
    d_model, mels, _ = ckpt.shape("encoder/conv1/weight")
    layers = {int(m.group(1)) for k in names if (m := re.match(r"encoder/layer_(\d+)/", k))}
    return AudioEncoderConfig(
        num_mel_bins=mels, d_model=d_model, encoder_layers=len(layers),
        encoder_attention_heads=int(ckpt.read("encoder/num_heads")),
        encoder_ffn_dim=ckpt.shape("encoder/layer_0/ffn/linear_0/weight")[0],
        max_source_positions=ckpt.shape("encoder/position_encodings/encodings")[0])


def rules(config: AudioEncoderConfig) -> tuple[Rule, ...]:
    """CTranslate2's encoder names -> :class:`ports.audio.AudioEncoder` paths (at the root of the tree).

    Read-only: the fused q/k/v rules have no inverse (export goes through the Hugging Face table)."""
    d = config.d_model
    layer = f"encoder/layer_{LAYER}"

    def norm(theirs, ours):
        return [Rule(f"{theirs}/gamma", f"{ours}/scale"), Rule(f"{theirs}/beta", f"{ours}/bias")]

    def linear(theirs, ours):
        return [Rule(f"{theirs}/weight", f"{ours}/kernel", **LINEAR), Rule(f"{theirs}/bias", f"{ours}/bias")]

    def fused(i):  # rows [i*D, (i+1)*D) of the fused q/k/v projection
        return lambda w: w[i * d:(i + 1) * d].T

    out = [Rule("encoder/conv1/weight", "conv1/kernel", **CONV), Rule("encoder/conv1/bias", "conv1/bias"),
           Rule("encoder/conv2/weight", "conv2/kernel", **CONV), Rule("encoder/conv2/bias", "conv2/bias"),
           Rule("encoder/position_encodings/encodings", "embed_positions"),
           *norm("encoder/layer_norm", "layer_norm"),
           *norm(f"{layer}/self_attention/layer_norm", "layers/self_attn_layer_norm"),
           *linear(f"{layer}/self_attention/linear_1", "layers/self_attn/out_proj"),
           *norm(f"{layer}/ffn/layer_norm", "layers/final_layer_norm"),
           *linear(f"{layer}/ffn/linear_0", "layers/fc1"), *linear(f"{layer}/ffn/linear_1", "layers/fc2")]
    qkv = f"{layer}/self_attention/linear_0"
    for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
        out.append(Rule(f"{qkv}/weight", f"layers/self_attn/{proj}/kernel", fused(i)))
        if proj != "k_proj":
            out.append(Rule(f"{qkv}/bias", f"layers/self_attn/{proj}/bias", lambda b, i=i: b[i * d:(i + 1) * d]))
    return tuple(out)


def check_key_bias(ckpt: CTranslate2Checkpoint, config: AudioEncoderConfig) -> None:
    """Whisper's k_proj has no bias, so the fused bias must be zero on its k rows (else the port cannot hold it)."""
    d = config.d_model
    bad = [i for i in range(config.encoder_layers)
           if np.any(ckpt.read(f"encoder/layer_{i}/self_attention/linear_0/bias")[d:2 * d])]
    if bad:
        raise ConversionError(f"{ckpt.source}: layers {bad} have a nonzero key bias; the Whisper encoder port has "
                              "no k_proj bias")
