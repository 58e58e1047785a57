#!/usr/bin/env python3
"""Training-step time of the source model's conformer encoder against the channels of its 1/6
convolutional subsampling, on the CPU (random weights, random features; nothing downloaded).

The encoder is built from a training YAML's encoder_conf (default: the recipe's
conf/tuning/train_source.yaml), once as ESPnet's ``conformer`` with ``input_layer: conv2d6``
(whose two convolutions have output_size channels) and once per --channels value as
``conformer_narrow_subsampling`` (espnet_hdmole/asr/narrow_conformer.py). A step is what stage 4's
steps 1 and 1b run for the encoder: forward, sum of the output as the loss, backward, Adam step,
on a batch of --batch utterances of --frames 10-ms frames of --feat_dim features. The time of the
subsampling alone (its forward and backward) is also given.

Columns: input layer, channels of its convolutions, encoder parameters, median step (s),
median subsampling forward+backward (s), step relative to conv2d6.
Timings need idle cores.
"""
import argparse
import statistics
import time

import torch
import yaml

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_hdmole.asr.narrow_conformer import ConformerEncoderNarrowSubsampling


def encoder_conf(config: str) -> dict:
    with open(config, encoding="utf-8") as f:
        conf = dict((yaml.safe_load(f) or {}).get("encoder_conf") or {})
    conf.pop("subsampling_channels", None)
    conf["input_layer"] = "conv2d6"
    return conf


def time_encoder(enc: torch.nn.Module, feats: torch.Tensor, lens: torch.Tensor, steps: int):
    opt = torch.optim.Adam(enc.parameters(), lr=1e-4)
    step_times, sub_times = [], []
    for i in range(steps + 2):  # the first two are warm-up
        t0 = time.perf_counter()
        out, _, _ = enc(feats, lens)
        out.sum().backward()
        opt.step()
        opt.zero_grad()
        t1 = time.perf_counter()
        mask = torch.ones(feats.size(0), 1, feats.size(1), dtype=torch.bool)
        sub, _ = enc.embed(feats, mask)
        (sub[0] if isinstance(sub, tuple) else sub).sum().backward()
        opt.zero_grad()
        t2 = time.perf_counter()
        if i >= 2:
            step_times.append(t1 - t0)
            sub_times.append(t2 - t1)
    return statistics.median(step_times), statistics.median(sub_times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="egs2/kespeech_hdmole/asr1/conf/tuning/train_source.yaml")
    p.add_argument("--channels", type=int, nargs="+", default=[64, 32, 16])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--feat_dim", type=int, default=83)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conf = encoder_conf(args.config)
    feats = torch.randn(args.batch, args.frames, args.feat_dim)
    lens = torch.full((args.batch,), args.frames)
    print(f"encoder_conf of {args.config}; batch {args.batch} x {args.frames} frames x {args.feat_dim}, "
          f"{args.threads} threads, median of {args.steps} steps\n")
    print("| input layer | conv channels | encoder params | step (s) | subsampling fwd+bwd (s) | step vs conv2d6 |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [("conv2d6 (ESPnet)", conf.get("output_size", 256), ConformerEncoder(args.feat_dim, **conf))]
    for c in args.channels:
        rows.append(("conv2d6, narrow", c, ConformerEncoderNarrowSubsampling(args.feat_dim, subsampling_channels=c, **conf)))
    base = None
    for name, channels, enc in rows:
        step, sub = time_encoder(enc, feats, lens, args.steps)
        base = base or step
        n = sum(p.numel() for p in enc.parameters())
        print(f"| {name} | {channels} | {n:,} | {step:.3f} | {sub:.3f} | {step / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
