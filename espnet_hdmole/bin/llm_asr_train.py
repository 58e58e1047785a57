#!/usr/bin/env python3
"""Train the LLM-based ASR model (speech encoder -> projector -> causal LLM) with ESPnet.

All of ESPnet's training options apply (--config, --resume, --init_param, --freeze_param,
--use_adapter/--adapter/--adapter_conf, --save_strategy, --ngpu, --dist_*, ...). Task options:
--model_conf (llm_dir, accent_list, prompt, aid_weight, projector_conf, ...), --encoder
(conformer | transformer | whisper) with --encoder_conf, --frontend, --normalize, --specaug.
Data: speech (fbank ark or wav), text (transcripts), optionally accent (utt2accent), e.g.
  --train_data_path_and_name_and_type dump/train/feats.scp,speech,kaldi_ark
  --train_data_path_and_name_and_type dump/train/text,text,text
  --train_data_path_and_name_and_type dump/train/utt2accent,accent,text
and, for a frozen encoder, its stored outputs (espnet_hdmole.bin.dump_encoder_outputs):
  --train_data_path_and_name_and_type exp/encoder_out/train/encoder_out.scp,encoder_out,kaldi_ark
Adapters: `adapter: hdmole` (this project; save_strategy: required_grad_only for adapter-only
checkpoints) or `adapter: lora` (ESPnet's). Inputs are checked before training starts; a user error
(bad config key, data file, model directory) is one ERROR line, with its traceback under --verbose true.
--model_info_args "--model valid.acc.ave.pth --data dump/fbank_pitch/dev --accents data/accents.txt"
then writes the trained system's params.json / routing.json / train_stats.json in the same process
(espnet_hdmole.bin.model_info, on the first rank), instead of a second start of ESPnet.
"""
import shlex
import sys

import torch.distributed
from espnet2.utils.types import str2bool

from espnet_hdmole.errors import run_cli
from espnet_hdmole.tasks.llm_asr import LLMASRTask


def get_parser():
    parser = LLMASRTask.get_parser()
    parser.description = __doc__
    parser.add_argument("--verbose", type=str2bool, default=False,
                        help="show the traceback of a user error (bad config, data or model files) too")
    parser.add_argument("--model_info_args", type=str, default="",
                        help="after training, run espnet_hdmole.bin.model_info on --output_dir with these "
                             "options (e.g. \"--model valid.acc.ave.pth --data DIR --accents FILE\"); empty: not")
    return parser


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    info_args = shlex.split(args.model_info_args)
    del args.model_info_args  # not a training option: kept out of config.yaml
    if info_args:  # checked before training, not after it
        from espnet_hdmole.bin import model_info

        model_info.get_parser().parse_args(["--exp", args.output_dir] + info_args)
    LLMASRTask.main(args=args)
    rank = 0
    # ESPnet leaves the process group (of a torchrun launch) open; a gloo group torn down by the
    # interpreter's exit can abort ("terminate called without an active exception"), so every
    # rank waits for the others and closes it here.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    elif getattr(args, "distributed", False) and getattr(args, "multiprocessing_distributed", False):
        # ESPnet's spawn mode: this process is one node's parent, outside the process group; the
        # first node's parent writes the model info, not every node's
        from espnet2.train.distributed_utils import get_node_rank

        rank = get_node_rank(args.dist_rank, args.dist_launcher) or 0
    if info_args and rank == 0 and not args.collect_stats:  # --collect_stats trains nothing
        model_info.main(["--exp", args.output_dir] + info_args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
