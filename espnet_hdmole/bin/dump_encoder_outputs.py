#!/usr/bin/env python3
"""Write a trained model's frozen encoder outputs for data sets, once, for every system.

Reads each --feats_scp (fbank ark/scp), runs the model's frontend, normalisation and encoder
(eval mode, no SpecAugment, one utterance at a time) and writes under its --output_dir:
  encoder_out.ark, encoder_out.scp   uid -> (frames, encoder dim) float32
  encoder_out_shape                  uid frames,dim
Training and decoding read them as the data key encoder_out, e.g.
  --train_data_path_and_name_and_type DIR/encoder_out.scp,encoder_out,kaldi_ark
and skip the encoder; the model first checks that its own encoder reproduces them.

  python -m espnet_hdmole.bin.dump_encoder_outputs --model_config exp/source/config.yaml \\
      --model_file exp/source/valid.acc.ave.pth --feats_scp dump/fbank_pitch/train/feats.scp \\
      --output_dir exp/encoder_out/train
"""
import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from espnet2.utils.types import str2bool

from espnet_hdmole.asr.encoder_store import write_encoder_outputs
from espnet_hdmole.errors import UserError, UserFileError, run_cli
from espnet_hdmole.tasks.llm_asr import LLMASRTask


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_config", required=True, help="config.yaml of the trained model")
    p.add_argument("--model_file", required=True, help="its checkpoint (.pth)")
    p.add_argument("--feats_scp", required=True, action="append",
                   help="a data set's feats.scp (kaldi_ark features); repeat it with --output_dir for several sets")
    p.add_argument("--output_dir", required=True, action="append", help="where the outputs of that --feats_scp go")
    p.add_argument("--nthreads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log_level", default="INFO")
    p.add_argument("--verbose", type=str2bool, default=False, help="show the traceback of a user error")
    return p


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    if args.nthreads > 0:
        torch.set_num_threads(args.nthreads)
    if len(args.feats_scp) != len(args.output_dir):
        raise UserError(f"{len(args.feats_scp)} --feats_scp but {len(args.output_dir)} --output_dir: give one of each per set")
    for scp in args.feats_scp:
        if not Path(scp).is_file():
            raise UserFileError(f"--feats_scp '{scp}' does not exist")
    model, _ = LLMASRTask.build_model_from_file(args.model_config, args.model_file, "cpu")
    for scp, out in zip(args.feats_scp, args.output_dir):
        t0 = time.perf_counter()
        n = write_encoder_outputs(model, Path(scp), Path(out))
        logging.info(f"{n} utterances of {scp} encoded in {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
