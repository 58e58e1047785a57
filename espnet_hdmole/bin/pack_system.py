#!/usr/bin/env python3
"""Pack a trained system into one shareable archive (espnet_hdmole.system_archive): its config,
checkpoint and provenance, the base checkpoints, LLM, CMVN statistics (and Whisper model) it was
built from, the decoding settings, and optionally the n-gram LM and its row of RESULTS.md.

    cd egs2/kespeech_hdmole/asr1
    python -m espnet_hdmole.bin.pack_system --exp_dir exp/hdmole --out hdmole.tar --results exp/RESULTS.md

The decoding settings (beam size, maximum length, n-gram LM and weight) are by default those stage 6
scored the system with (the command line of exp/<system>/decode_union/decode.log); options override them.

Then, anywhere (no recipe tree needed):

    from espnet_hdmole.system_archive import load_system
    print(load_system("hdmole.tar").transcribe("utt.wav"))
"""
import argparse
import sys

from espnet2.utils.types import str2bool, str_or_none

from espnet_hdmole.errors import run_cli
from espnet_hdmole.system_archive import DECODE_DEFAULTS, pack


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True, help="the system's training directory (config.yaml, checkpoints)")
    p.add_argument("--out", required=True, help="the archive to write (a tar file)")
    p.add_argument("--model_file", default="valid.acc.ave.pth", help="the checkpoint of --exp_dir to pack")
    p.add_argument("--root", default=".", help="the directory the config's relative paths start from (the recipe's)")
    p.add_argument("--feats_type", type=str_or_none, default=None, choices=["fbank_pitch", "fbank", "raw", None],
                   help="the features the system reads (default: from the config's input_size: 83, 80, 1)")
    for key, value in DECODE_DEFAULTS.items():
        p.add_argument(f"--{key}", type=type(value), default=None,
                       help=f"decoding setting stored in the archive (default: the one stage 6 scored the "
                            f"system with, from its decode_union log; else {value})")
    p.add_argument("--ngram_lm", type=str_or_none, default=None,
                   help="an ARPA n-gram LM over the LLM's tokens to fuse (default: the one stage 6 used)")
    p.add_argument("--results", type=str_or_none, default=None, help="a RESULTS.md whose row of this system goes in")
    p.add_argument("--overwrite", type=str2bool, default=False, help="replace an existing --out")
    return p


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    decode = {k: getattr(args, k) for k in DECODE_DEFAULTS}
    out = pack(args.exp_dir, args.out, args.model_file, args.root, args.feats_type, decode, args.ngram_lm,
               args.results, args.overwrite)
    print(f"{args.exp_dir} -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
