#!/usr/bin/env python3
"""Decode with a trained LLM-based ASR model: greedy or beam search over the LLM with its KV
cache, batched over utterances.

Writes ESPnet-style outputs under --output_dir:
  1best_recog/text    uid -> recognised text
  1best_recog/token   uid -> tokens (space separated)
  1best_recog/score   uid -> log-probability of the hypothesis
  1best_recog/accent  uid -> predicted accent (when the model has an accent head)
  rtf                 decoding time, audio duration and the real-time factor (without the
                      encoder's time when its stored outputs are read: encoder_timed 0)

With --ngram_file and --ngram_weight, the search adds the weighted log-probabilities of an
n-gram LM over the LLM's tokens (shallow fusion; the recipe's stage 3 makes one).

Decoding needs no accent label (the accent head predicts the domain posterior) unless the
model's adapter uses global_router: oracle; then pass the labels as a data file named accent.

  python -m espnet_hdmole.bin.llm_asr_inference --asr_train_config exp/x/config.yaml \\
      --asr_model_file exp/x/valid.acc.ave.pth --output_dir exp/x/decode_test \\
      --data_path_and_name_and_type dump/test/feats.scp,speech,kaldi_ark
"""
import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from espnet2.fileio.datadir_writer import DatadirWriter
from espnet2.utils.types import str2bool, str2triple_str, str_or_none

from espnet_hdmole.asr.encoder_store import DATA_NAME as ENCODER_OUT
from espnet_hdmole.asr.llm_utils import one_line
from espnet_hdmole.errors import UserError, run_cli
from espnet_hdmole.lm.ngram_scorer import NgramScorer
from espnet_hdmole.tasks.llm_asr import LLMASRTask


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_train_config", required=True, help="config.yaml written by training")
    p.add_argument("--asr_model_file", required=True, help="checkpoint (.pth), e.g. valid.acc.ave.pth")
    p.add_argument("--data_path_and_name_and_type", type=str2triple_str, action="append", required=True,
                   help="path,name,type of the input data (speech; accent for oracle routing; encoder_out: "
                        "the encoder's stored outputs, see espnet_hdmole.bin.dump_encoder_outputs)")
    p.add_argument("--key_file", type=str_or_none, default=None, help="decode only these utterance ids")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--batch_size", type=int, default=8, help="utterances decoded together")
    p.add_argument("--beam_size", type=int, default=1, help="1: greedy search; >1: beam search")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--length_penalty", type=float, default=1.0,
                   help="beam search picks the best score / length**length_penalty")
    p.add_argument("--ngram_file", type=str_or_none, default=None,
                   help="an ARPA n-gram LM over the LLM's tokens (local/train_ngram_lm.py) for shallow fusion")
    p.add_argument("--ngram_weight", type=float, default=0.0,
                   help="weight of the n-gram LM's log-probabilities in the search (0: no fusion)")
    p.add_argument("--ngpu", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32"],
                   help="the model's dtype; the LLM is in model_conf.llm_dtype when set, the HDMoLE "
                        "adapters and the accent head in float32 whatever this is")
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--nthreads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log_level", default="INFO")
    p.add_argument("--verbose", type=str2bool, default=False,
                   help="show the traceback of a user error (e.g. a checkpoint that does not belong to its config)")
    return p


def inference(args) -> dict:
    device = "cuda" if args.ngpu > 0 else "cpu"
    if args.nthreads > 0:
        torch.set_num_threads(args.nthreads)
    model, train_args = LLMASRTask.build_model_from_file(args.asr_train_config, args.asr_model_file, device)
    model.to(dtype=getattr(torch, args.dtype)).eval()
    model.restore_dtypes()  # the LLM in model_conf.llm_dtype, the adapters and the accent head in float32
    ngram = None
    if args.ngram_file and args.ngram_weight != 0.0:
        ngram = NgramScorer(args.ngram_file, model.tokenizer)
        logging.info(f"shallow fusion with the {ngram.order}-gram LM {args.ngram_file}, weight {args.ngram_weight}")
    elif args.ngram_weight != 0.0:
        raise UserError(f"--ngram_weight {args.ngram_weight} needs an --ngram_file")
    loader = LLMASRTask.build_streaming_iterator(
        data_path_and_name_and_type=args.data_path_and_name_and_type,
        dtype=args.dtype,
        batch_size=args.batch_size,
        key_file=args.key_file,
        num_workers=args.num_workers,
        preprocess_fn=LLMASRTask.build_preprocess_fn(train_args, False),
        collate_fn=LLMASRTask.build_collate_fn(train_args, False),
        allow_variable_data_keys=False,
        inference=True,
    )
    out = Path(args.output_dir)
    stored = any(name == ENCODER_OUT for _, name, _ in args.data_path_and_name_and_type)
    keep = ("speech_lengths", ENCODER_OUT + "_lengths")  # the lengths recognize reads
    total_time, total_audio, n = 0.0, 0.0, 0
    with DatadirWriter(out) as writer:
        for keys, batch in loader:
            batch = {k: v.to(device) for k, v in batch.items() if not k.endswith("_lengths") or k in keep}
            t0 = time.perf_counter()
            hyps = model.recognize(
                batch["speech"], batch["speech_lengths"], accent=batch.get("accent"),
                beam_size=args.beam_size, max_new_tokens=args.max_new_tokens, length_penalty=args.length_penalty,
                encoder_out=batch.get(ENCODER_OUT), encoder_out_lengths=batch.get(ENCODER_OUT + "_lengths"),
                ngram=ngram, ngram_weight=args.ngram_weight,
            )
            total_time += time.perf_counter() - t0
            total_audio += float(batch["speech_lengths"].sum()) * model.frame_shift
            for k, h in zip(keys, hyps):
                w = writer["1best_recog"]
                w["text"][k] = one_line(h["text"])  # whatever the LLM emits: one line per utterance
                w["token"][k] = " ".join(h["tokens"])
                w["token_int"][k] = " ".join(map(str, h["token_ids"]))
                w["score"][k] = f"{h['score']:.4f}"
                if "accent" in h:
                    w["accent"][k] = h["accent"]
            n += len(keys)
            logging.info(f"decoded {n} utterances, RTF so far {total_time / max(total_audio, 1e-9):.4f}")
    rtf = total_time / max(total_audio, 1e-9)
    (out / "rtf").write_text(
        f"utterances {n}\ndecoding_seconds {total_time:.3f}\naudio_seconds {total_audio:.3f}\nrtf {rtf:.5f}\n"
        f"beam_size {args.beam_size}\nngram_weight {args.ngram_weight if ngram else 0.0}\nthreads {torch.get_num_threads()}\n"
        f"encoder_timed {0 if stored else 1}\n"
    )
    logging.info(f"RTF {rtf:.4f} ({total_time:.2f} s for {total_audio:.2f} s of audio, {n} utterances)")
    return {"rtf": rtf, "utterances": n}


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    print(" ".join(sys.argv), file=sys.stderr)
    return inference(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
