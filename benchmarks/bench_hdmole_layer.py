#!/usr/bin/env python3
"""Time forward+backward of one adapted linear layer on the CPU.

For each shape (tokens T, width d, experts N, rank r) it times:
  base       the frozen linear alone
  lora_r     one LoRA of rank r
  lora_Nr    one LoRA of rank N*r (the same low-rank FLOPs as N experts of rank r)
  hdmole     HDMoLELinear, experts batched (threshold activation, hierarchical product routing)
  loop       the same mixture computed with a Python loop over experts
and prints a table with the ratios hdmole/lora_Nr (target <= 1.3) and loop/hdmole (target > 1,
>= 1.5 at N = 8).

    python benchmarks/bench_hdmole_layer.py [--tokens 2048] [--threads 2] [--repeat 20]
"""
import argparse
import statistics
import time

import torch

from espnet_hdmole import HDMoLELinear, domain_posterior


class LoRA(torch.nn.Module):
    def __init__(self, base, rank):
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
        self.B = torch.nn.Parameter(torch.randn(base.out_features, rank) * 0.01)

    def forward(self, x):
        return self.base(x) + (x @ self.A.T) @ self.B.T


class LoopMoLE(torch.nn.Module):
    """The per-expert Python loop, with the same routing as the HDMoLE layer it shadows."""

    def __init__(self, layer: HDMoLELinear):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        ly = self.layer
        lead = x.shape[:-1]
        xt = x.reshape(-1, ly.in_features)
        w, *_ = ly.route(xt, lead)
        y = torch.nn.functional.linear(xt, ly.weight, ly.bias)
        for i in range(ly.num_experts):
            y = y + (w[:, i : i + 1] * ly.scaling) * ((xt @ ly.lora_A[i].T) @ ly.lora_B[:, i].T)
        return y.view(*lead, ly.out_features)


def time_fwd_bwd(module, x, repeat, warmup=3):
    times = []
    for i in range(warmup + repeat):
        x.grad = None
        for p in module.parameters():
            p.grad = None
        t0 = time.perf_counter()
        module(x).sum().backward()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 896])
    ap.add_argument("--experts", type=int, nargs="+", default=[4, 8, 9])
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"# torch {torch.__version__}, {args.threads} threads, T={args.tokens} tokens, "
          f"median of {args.repeat} forward+backward passes, times in ms")
    head = ("d", "N", "r", "base", "lora_r", "lora_Nr", "hdmole", "loop", "hdmole/lora_Nr", "loop/hdmole")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    worst_ratio, all_faster, n8_speedups = 0.0, True, []
    for d in args.dims:
        for n in args.experts:
            for r in args.ranks:
                base = torch.nn.Linear(d, d).requires_grad_(False)
                x = torch.randn(4, args.tokens // 4, d, requires_grad=True)
                # N experts as D domains x E experts per domain; N = 9 is KeSpeech's 9 domains
                dom = n if n in (9,) else n // 2
                epd = n // dom
                hd = HDMoLELinear(base, num_domains=dom, experts_per_domain=epd, rank=r,
                                  global_router="predicted", activation="threshold")
                with torch.no_grad():
                    hd.lora_B.normal_(std=0.01)
                g = torch.softmax(torch.randn(4, dom), -1)
                res = {}
                with domain_posterior(g):
                    res["base"] = time_fwd_bwd(base, x, args.repeat)
                    res["lora_r"] = time_fwd_bwd(LoRA(base, r), x, args.repeat)
                    res["lora_Nr"] = time_fwd_bwd(LoRA(base, n * r), x, args.repeat)
                    res["hdmole"] = time_fwd_bwd(hd, x, args.repeat)
                    res["loop"] = time_fwd_bwd(LoopMoLE(hd), x, args.repeat)
                ratio = res["hdmole"] / res["lora_Nr"]
                speed = res["loop"] / res["hdmole"]
                worst_ratio = max(worst_ratio, ratio)
                all_faster &= speed > 1
                if n == 8:
                    n8_speedups.append(speed)
                cells = [d, n, r] + [f"{res[k] * 1e3:.2f}" for k in head[3:8]] + [f"{ratio:.2f}", f"{speed:.2f}"]
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    print()
    print(f"worst hdmole/lora_Nr: {worst_ratio:.2f} (target <= 1.3): {'met' if worst_ratio <= 1.3 else 'NOT met'}")
    print(f"hdmole faster than the loop at every shape: {'yes' if all_faster else 'NO'}")
    if n8_speedups:
        m = min(n8_speedups)
        print(f"smallest loop/hdmole at N=8: {m:.2f} (target >= 1.5): {'met' if m >= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
