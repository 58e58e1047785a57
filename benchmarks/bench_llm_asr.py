#!/usr/bin/env python3
"""Training-step time, peak memory and decoding real-time factor of the LLM-based ASR model
on the CPU, per fine-tuning system, with models built from configs (nothing downloaded).

Each system runs in its own process so that its peak memory (max RSS) is its own:
  full_ft   projector + LLM trained (encoder frozen)
  lora      ESPnet's lora adapter (rank r) on the projector and LLM linears
  hdmole    HDMoLE (D domains x E experts of rank r, threshold, predicted routing) on the same
Decoding is timed for greedy and beam search with the KV cache.

    python benchmarks/bench_llm_asr.py --preset tiny
    python benchmarks/bench_llm_asr.py --preset demo --steps 10
"""
import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

PRESETS = {
    # the test-suite sizes
    "tiny": dict(enc_dim=32, enc_blocks=1, llm_hidden=32, llm_layers=2, vocab=60, batch=6, frames=50, text_len=6),
    # the demo recipe's sizes (DEMO_CORPUS.md's compute budget)
    "demo": dict(enc_dim=144, enc_blocks=6, llm_hidden=256, llm_layers=4, vocab=4000, batch=16, frames=300, text_len=12),
}
TARGETS = ["projector.linear1", "projector.linear2", "q_proj", "k_proj", "v_proj", "o_proj"]


def build(cfg, system, workdir):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from espnet2.layers.create_adapter import create_adapter

    from espnet_hdmole.asr.param_report import trainable_parameter_report
    from espnet_hdmole.tasks.llm_asr import LLMASRTask
    from tiny import make_llm_dir

    chars = [chr(0x4E00 + i) for i in range(cfg["vocab"] - 3)]
    llm = make_llm_dir(Path(workdir) / "llm", "".join(chars), hidden=cfg["llm_hidden"], layers=cfg["llm_layers"])
    d = cfg["enc_dim"]
    args = LLMASRTask.get_parser().parse_args([
        "--input_size", "80", "--encoder", "conformer", "--encoder_conf", f"output_size={d}",
        "--encoder_conf", "attention_heads=4", "--encoder_conf", f"linear_units={4 * d}",
        "--encoder_conf", f"num_blocks={cfg['enc_blocks']}", "--encoder_conf", "input_layer=conv2d",
        "--model_conf", f"llm_dir={llm}", "--model_conf", "projector_conf={'stack': 2}",
        "--model_conf", "accent_list=" + str([f"a{i}" for i in range(cfg["domains"])]),
        "--model_conf", "use_accent_head=true", "--model_conf", "aid_weight=0.1",
    ])
    model = LLMASRTask.build_model(args)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    if system == "full_ft":
        pass
    elif system == "lora":
        for p in model.parameters():
            p.requires_grad_(False)
        create_adapter(model, "lora", dict(rank=cfg["rank"] * cfg["domains"] * cfg["epd"], alpha=8,
                                           target_modules=TARGETS))
    elif system == "hdmole":
        create_adapter(model, "hdmole", dict(target_modules=TARGETS, num_domains=cfg["domains"],
                                             experts_per_domain=cfg["epd"], rank=cfg["rank"],
                                             keep_trainable=["accent_head"]))
    return model, trainable_parameter_report(model)


def batch_for(cfg, n, g):
    speech = torch.randn(n, cfg["frames"], 80, generator=g)
    lens = torch.full((n,), cfg["frames"], dtype=torch.long)
    text = torch.randint(3, cfg["vocab"], (n, cfg["text_len"]), generator=g)
    tl = torch.full((n,), cfg["text_len"], dtype=torch.long)
    acc = torch.randint(0, cfg["domains"], (n, 1), generator=g)
    return dict(speech=speech, speech_lengths=lens, text=text, text_lengths=tl, accent=acc)


def run_system(cfg, system, q):
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as wd:
        model, rep = build(cfg, system, wd)
        res = {"system": system, "trainable": rep["trainable"], "share": rep["share"]}
        if cfg["steps"] > 0:
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            model.train()
            times = []
            for i in range(cfg["steps"] + 2):
                b = batch_for(cfg, cfg["batch"], g)
                t0 = time.perf_counter()
                loss, _, _ = model(**b)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            res["step_s"] = statistics.median(times)
        model.eval()
        for beam in cfg["beams"]:
            b = batch_for(cfg, cfg["decode_utts"], g)
            model.recognize(b["speech"][:2], b["speech_lengths"][:2], beam_size=beam, max_new_tokens=2)  # warm-up
            t0 = time.perf_counter()
            model.recognize(b["speech"], b["speech_lengths"], beam_size=beam, max_new_tokens=cfg["text_len"] + 1)
            res[f"rtf_beam{beam}"] = (time.perf_counter() - t0) / (cfg["decode_utts"] * cfg["frames"] * 0.01)
        res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(res)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--systems", nargs="+", default=["full_ft", "lora", "hdmole"])
    ap.add_argument("--domains", type=int, default=9)
    ap.add_argument("--experts_per_domain", type=int, default=1)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--decode_utts", type=int, default=8)
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=str, default=None, help="also write the results here")
    a = ap.parse_args()
    cfg = dict(PRESETS[a.preset], domains=a.domains, epd=a.experts_per_domain, rank=a.rank, steps=a.steps,
               decode_utts=a.decode_utts, beams=a.beams, threads=a.threads)
    print(f"# preset {a.preset}: {json.dumps(PRESETS[a.preset])}; D={a.domains} E={a.experts_per_domain} "
          f"r={a.rank} (lora rank D*E*r); torch {torch.__version__}, {a.threads} threads")
    ctx = mp.get_context("spawn")
    rows = []
    for s in a.systems:
        q = ctx.Queue()
        p = ctx.Process(target=run_system, args=(cfg, s, q))
        p.start()
        rows.append(q.get())
        p.join()
    beams = [f"rtf_beam{b}" for b in a.beams]
    head = ["system", "trainable", "% of full FT", "step (s)", "utts/s", "max RSS (MB)"] + beams
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        step = r.get("step_s", float("nan"))
        cells = [r["system"], f"{r['trainable']:,}", f"{r['share']:.2f}", f"{step:.3f}",
                 f"{cfg['batch'] / step:.1f}", f"{r['max_rss_mb']:.0f}"] + [f"{r[b]:.4f}" for b in beams]
        print("| " + " | ".join(cells) + " |")
    by = {r["system"]: r for r in rows}
    if "hdmole" in by and "lora" in by and "step_s" in by["hdmole"]:
        print(f"hdmole/lora step time: {by['hdmole']['step_s'] / by['lora']['step_s']:.2f} (target <= 1.3)")
    if "hdmole" in by and "full_ft" in by and "step_s" in by["hdmole"]:
        print(f"hdmole/full_ft step time: {by['hdmole']['step_s'] / by['full_ft']['step_s']:.2f} (target < 1)")
    if a.json:
        Path(a.json).write_text(json.dumps({"config": cfg, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
