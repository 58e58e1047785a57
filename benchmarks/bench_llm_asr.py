#!/usr/bin/env python3
"""Training-step time, peak memory and decoding real-time factor of the stage-5 fine-tuning
systems of egs2/kespeech_hdmole/asr1, on the CPU, with models built from configs (random
weights, random features; nothing downloaded).

What is built is what the recipe trains: the architecture of conf/tuning/train_source.yaml
(conformer encoder, CTC compression, projector, prompt) overlaid with a system's
conf/tuning/finetune_<system>.yaml as local/merge_config.py does (encoder dropout 0, no CTC
loss, cache_encoder_outputs), then --freeze_param and the adapter (adapter, adapter_conf) of
that yaml, applied in the trainer's order. The LLM is a Qwen2 causal LM of
conf/tuning/llm_demo.yaml's shape (intermediate 3 x hidden, as local/pretrain_llm.py) with a
character tokenizer. Systems:
  full_ft    finetune_full.yaml: projector + LLM trained, encoder frozen
  lora       finetune_lora.yaml: ESPnet's lora (rank 18, alpha 36) on the projector and LLM linears
  hdmole     finetune_hdmole.yaml: 9 domains x 1 expert of rank 2 (alpha 4), predicted global
             router (the accent head, frozen: aid_weight 0), dynamic threshold, on the same linears
  mole_topk  finetune_mole_topk.yaml: 9 experts of rank 2, static top-2, no global router (optional)
  hdmole_no_routing  a control (optional): hdmole with its routing taken out, the same matmuls with
             every expert weighted 1/N (benchmarks/routing_free_control.py): the floor of any
             implementation of the routing
  hdmole_native  a control (optional): hdmole with its autograd node's forward and backward in C++
             (benchmarks/native_group_control.py; the same operations, bit for bit; compiled at first
             use): what a native node per group would save
The presets only change sizes: `demo` is the recipe's (encoder 144 x 4 blocks, linear_units 576,
conv2d6; projector hidden 256; LLM 4 layers x 256; ~3000 characters; batches of 16
utterances of ~3.5 s (350 frames of 10 ms, +-10%) with ~14-token transcripts); `tiny` is for
checking that the script runs; `wide` is the demo with an LLM of Qwen2-0.5B's width (hidden 896,
intermediate 4864, 4 layers), where the LLM's weights rather than per-layer overheads dominate.

With CTC compression (train_source.yaml's model_conf.ctc_compress), the randomly initialised CTC
head would cut random features at random, so its greedy path is replaced by a fixed one: one
syllable (blank, initial, final, final) per 4 encoder frames (0.24 s), which gives the LLM about
as many speech positions as the transcript has tokens, as in the trained recipe.

Training steps are timed as the ESPnet trainer runs them: model(**batch, utt_id=[...]),
zero_grad, backward, clip_grad_norm_(5.0), Adam step. With the recipe's
cache_encoder_outputs the frozen encoder runs once per utterance: a fixed pool of --pool batches
(each with its utterance ids) is run once untimed (this fills the encoder-output cache, as the
first epoch does), then --steps steps cycling over the pool are timed. --no_cache passes no
utt_id, so the encoder runs in every timed step (the recipe's first epoch, or a recipe without
the cache). Each system runs in its own (spawned) process, so that its max RSS is its own.

Columns:
  trainable      parameters with requires_grad after freezing and adapting
  % of full FT   trainable / the base parameters of the parts the system touches (param_report)
  step (s)       median wall time of a timed training step (batch of `batch` utterances)
  forward / backward / update (s)   the median time of each phase of a timed step: the model's
                 forward (loss included); zero_grad and backward; clipping and the optimiser's
                 update (each its own median: they need not add up to the step's)
  utts/s         batch / step
  max RSS (MB)   peak resident memory of the system's process (build, training and decoding)
  RTF greedy / RTF beamK   decoding time / audio duration for --decode_utts utterances in
                 batches of --decode_batch (the demo's run.sh decodes 64 at a time), model.recognize with
                 the KV cache, encoder included, at most text_len + 1 new tokens per utterance
                 (a trained model stops after its ~14 tokens). Decoding runs before training, with
                 the adapters at their initialisation (B = 0), so all systems decode the same tokens;
                 the median of --decode_passes timed passes over the utterances.
The target lines compare hdmole with lora (step time <= 1.2x, 1.1x at the wide preset; decoding
RTF <= 1.2x) and with full_ft (step time <= 1x); with hdmole_no_routing among the systems, a
line compares it with full_ft too, and likewise hdmole_native (and it with hdmole).
--repeats K runs every system K times, in turn, and reports the medians of the timings (the
speed targets are judged on the median of 3 runs), and after each target line the ratio in
each run (how far it moves from run to run).
--interleave instead builds every system in one process and times them round by round, each
system in turn (benchmarks/timed_system.py): a round is a short untimed decoding and one timed
pass per beam, or one untimed and --block timed training steps (--steps, the timed steps per
system and run, a multiple of --block). The target lines then give the median of the rounds'
paired ratios with a 95% bootstrap interval over runs and rounds, and say "met" only where the
whole interval lies within the target ("undecided" where the target lies inside it). Between
separate processes the ratios moved by +-0.2 from day to day on this project's shared virtual
machine; within one process the machine's drift reaches every system of a round alike.
--repeats K runs K such processes. The max RSS is not measured (one process holds every
system); step_s_rounds in --json has each round's mean timed step.
--json also has, per system: first_pass_step_s (median step of the untimed pass, encoder
included), step_s_all, phases_all (each timed step's forward, backward and update),
rtf_beamK_passes, tokens_per_utt_beamK, cached_utts, build_s and the adapter_conf used.
Timings need idle cores: with another job on the machine, 2 threads can be many times slower
than 1 (use --threads 1, or run when the machine is free).

--sweep instead varies HDMoLE's size, hdmole as finetune_hdmole.yaml otherwise: domains
D = 1, 3, 9 with E = 1 expert per domain, and E = 1, 2, 4 with D = 9; for each point it also
runs lora with the same total rank N * r (alpha / rank as finetune_lora.yaml). D = 1 has no
global router (an accent head needs >= 2 domains; with one domain its posterior would be 1).
Columns: D, E, N = D * E experts, trainable (hdmole), step (s) (hdmole), lora rank, lora step (s),
ratio = hdmole step / lora step, RTF greedy (hdmole) and lora RTF greedy.

    python benchmarks/bench_llm_asr.py --preset tiny --steps 3
    python benchmarks/bench_llm_asr.py --preset tiny --steps 2 --sweep
    python benchmarks/bench_llm_asr.py --preset demo --steps 60 --interleave --repeats 3 --systems full_ft lora hdmole
    python benchmarks/bench_llm_asr.py --preset demo --steps 10 --systems full_ft lora hdmole mole_topk --json bench_demo.json
    python benchmarks/bench_llm_asr.py --preset demo --steps 10 --no_cache
    python benchmarks/bench_llm_asr.py --preset demo --steps 6 --sweep --json bench_sweep.json
"""
import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from llm_asr_systems import PRESETS, SYSTEM_YAML, system_spec  # (beside this script)
from timed_system import PHASES, TimedSystem, interleaved_run, paired_ratio, summarise_steps, target_verdict

SWEEP = [(1, 1), (3, 1), (9, 1), (9, 2), (9, 4)]  # (D, E)


def run_system(cfg, name, spec, wd):
    """One system alone: its decoding passes, then its training steps, and its process's max RSS."""
    ts = TimedSystem(cfg, name, spec, wd)
    res = dict(ts.info)
    for beam in cfg["beams"]:
        ts.warm_decoding(beam)
        # the median pass: one hiccup of the machine moves nothing
        passes = [ts.decode_pass(beam) for _ in range(cfg["decode_passes"])]
        res[f"rtf_beam{beam}"] = statistics.median(rtf for rtf, _ in passes)
        res[f"rtf_beam{beam}_passes"] = [rtf for rtf, _ in passes]
        res[f"tokens_per_utt_beam{beam}"] = passes[-1][1]
    if cfg["steps"] > 0:
        res["first_pass_step_s"] = statistics.median(ts.start_training())
        res["cached_utts"] = ts.info["cached_utts"]
        summarise_steps(res, [ts.step() for _ in range(cfg["steps"])])
    res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def run_interleaved(cfg, specs, wd):
    """The systems of ``specs`` interleaved in this process (timed_system.interleaved_run)."""
    return interleaved_run(cfg, specs, wd, cfg["block"])


def _child(target, cfg, args, q):
    """target(cfg, *args, workdir) in the spawned process, its result (or its error) on the queue."""
    torch.set_num_threads(cfg["threads"])
    try:
        with tempfile.TemporaryDirectory() as wd:
            q.put(target(cfg, *args, wd))
    except BaseException as e:  # report instead of hanging the parent on q.get()
        import traceback

        q.put({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


def run_in_subprocess(cfg, name, spec):
    res = _spawn(f"system {name}", run_system, cfg, name, spec)
    print(f"  {name}: done ({', '.join(f'{k}={v:.3f}' for k, v in res.items() if k.endswith('_s') and isinstance(v, float))})",
          file=sys.stderr, flush=True)
    return res


def _spawn(what, target, cfg, *args):
    """target(cfg, *args, workdir) in a spawned process (so that its max RSS is its own): its result."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(target, cfg, args, q))
    p.start()
    res = q.get()
    p.join()
    if "error" in res:
        print(res["traceback"], file=sys.stderr)
        raise SystemExit(f"{what} failed: {res['error']}")
    return res


def fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def table(head, rows):
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def median_rows(runs):
    """One row per system from --repeats runs (a list of {system: result}): the median of every
    timing (``*_s``) and RTF; ``<key>_runs`` keeps each run's figure of it (``step_s_runs``,
    ``rtf_beamK_runs``, ...), ``rtf_beamK_passes`` each run's timed decoding passes (and
    ``step_s_rounds`` each interleaved run's rounds)."""
    rows = []
    for name in runs[0]:
        got = [run[name] for run in runs]
        row = dict(got[0], repeats=len(got))
        for k, v in got[0].items():
            if isinstance(v, float) and (k.endswith("_s") or k.startswith("rtf_")):
                row[k + "_runs"] = [g[k] for g in got]
                row[k] = statistics.median(row[k + "_runs"])
            elif k.endswith(("_passes", "_rounds")):
                row[k] = [g[k] for g in got]
        rows.append(row)
    return rows


def main_systems(a, cfg):
    if a.interleave:  # all systems in one process, round by round, --repeats processes over
        specs = {s: system_spec(s) for s in a.systems}
        runs = [_spawn("interleaved run", run_interleaved, cfg, specs) for _ in range(a.repeats)]
    else:  # the systems in turn, --repeats times over (so a drift of the machine's speed reaches them all)
        runs = [{s: run_in_subprocess(cfg, s, system_spec(s)) for s in a.systems} for _ in range(a.repeats)]
    rows = median_rows(runs)
    beams = [f"rtf_beam{b}" for b in a.beams]
    head = ["system", "trainable", "% of full FT", "step (s)", "forward (s)", "backward (s)", "update (s)",
            "utts/s", "max RSS (MB)"] + ["RTF greedy" if b == 1 else f"RTF beam{b}" for b in a.beams]
    cells = []
    for r in rows:
        step = r.get("step_s")
        cells.append([r["system"], f"{r['trainable']:,}", f"{r['share']:.2f}", fmt(step, ".3f")]
                     + [fmt(r.get(k), ".4f") for k in PHASES]
                     + [fmt(cfg["batch"] / step if step else None, ".1f"), fmt(r.get("max_rss_mb"), ".0f")]
                     + [fmt(r[b], ".4f") for b in beams])
    table(head, cells)
    if a.interleave:
        print("(interleaved: one process holds every system, so no system's own peak memory is measured)")
    by = {r["system"]: r for r in rows}
    of = f" (median of {a.repeats} runs)" if a.repeats > 1 else ""
    step_limit = 1.1 if a.preset == "wide" else 1.2  # the targets of the speed issue

    def ratio(what, other, key, target, system="hdmole"):
        if a.interleave:  # the median of the rounds' paired ratios, with its interval
            paired = "step_s_rounds" if key == "step_s" else f"{key}_passes"
            pr = paired_ratio(by[system][paired], by[other][paired])
            ci = "no interval" if pr["ci"] is None else "95% CI {:.3f}, {:.3f}".format(*pr["ci"])
            n_rounds = len(by[system][paired][0])
            print(f"{system}/{other} {what} (interleaved, {a.repeats} run(s) x {n_rounds} rounds): {pr['median']:.3f} "
                  f"[{ci}] (target <= {target}: {target_verdict(pr['ci'], target)}); run by run: "
                  + ", ".join(f"{x:.3f}" for x in pr["runs"]))
            return
        line = f"{system}/{other} {what}{of}: {by[system][key] / by[other][key]:.2f} (target <= {target})"
        if a.repeats > 1:  # how far the ratio moves between runs
            line += "; run by run: " + ", ".join(f"{x:.2f}" for x in run_ratios(by[system], by[other], key))
        print(line)

    if "hdmole" in by and "lora" in by and "step_s" in by["hdmole"]:
        ratio("step time", "lora", "step_s", step_limit)
        for b in beams:
            ratio("RTF greedy" if b == "rtf_beam1" else b.replace("rtf_", "RTF "), "lora", b, 1.2)
    if "hdmole" in by and "full_ft" in by and "step_s" in by["hdmole"]:
        ratio("step time", "full_ft", "step_s", 1)
    if "hdmole_no_routing" in by and "full_ft" in by and "step_s" in by["hdmole_no_routing"]:
        # the control against the same target: could any routing meet it at this size?
        ratio("step time", "full_ft", "step_s", 1, system="hdmole_no_routing")
    if "hdmole_native" in by and "step_s" in by["hdmole_native"]:
        for other in ("full_ft", "hdmole"):  # a native node against the target, and what it saves
            if other in by:
                ratio("step time", other, "step_s", 1, system="hdmole_native")
    return rows


def run_ratios(row, other, key):
    """row's timing ``key`` over other's, run by run (``<key>_runs``; the systems of a run are
    timed in turn, so the two figures of a run saw the same state of the machine)."""
    return [x / y for x, y in zip(row[f"{key}_runs"], other[f"{key}_runs"])]


def main_sweep(a, cfg):
    cfg = dict(cfg, beams=[1])
    hd_rank = system_spec("hdmole")["adapter_conf"]["rank"]
    rows, lora_by_rank = [], {}
    for d, e in SWEEP:
        hd = run_in_subprocess(cfg, f"hdmole D={d} E={e}", system_spec("hdmole", domains=d, experts=e))
        rank = d * e * hd_rank
        if rank not in lora_by_rank:
            lora_by_rank[rank] = run_in_subprocess(cfg, f"lora rank {rank}", system_spec("lora", domains=d, lora_rank=rank))
        rows.append({"D": d, "E": e, "N": d * e, "hdmole": hd, "lora_rank": rank, "lora": lora_by_rank[rank]})
    head = ["D", "E", "N", "trainable", "step (s)", "lora rank", "lora step (s)", "ratio to lora", "RTF greedy",
            "lora RTF greedy"]
    cells = []
    for r in rows:
        hs, ls = r["hdmole"].get("step_s"), r["lora"].get("step_s")
        cells.append([str(r["D"]), str(r["E"]), str(r["N"]), f"{r['hdmole']['trainable']:,}", fmt(hs, ".3f"),
                      str(r["lora_rank"]), fmt(ls, ".3f"), fmt(hs / ls if hs and ls else None, ".2f"),
                      fmt(r["hdmole"]["rtf_beam1"], ".4f"), fmt(r["lora"]["rtf_beam1"], ".4f")])
    table(head, cells)
    print("(D = 1: no global router, see --help)")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--systems", nargs="+", default=["full_ft", "lora", "hdmole"], choices=list(SYSTEM_YAML),
                    help="systems of the main table (mole_topk is optional)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps, after the untimed pass over the pool")
    ap.add_argument("--pool", type=int, default=4, help="batches in the fixed pool the timed steps cycle over")
    ap.add_argument("--no_cache", action="store_true", help="no utt_id: the frozen encoder runs in every step")
    ap.add_argument("--decode_utts", type=int, default=None, help="utterances decoded (default: the preset's)")
    ap.add_argument("--decode_batch", type=int, default=None, help="utterances per decoding batch (default: the preset's)")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 4], help="beam sizes decoded (1: greedy)")
    ap.add_argument("--decode_passes", type=int, default=3,
                    help="timed decoding passes per run and beam; the RTF is their median")
    ap.add_argument("--sweep", action="store_true", help="the D / E sweep of hdmole against lora instead")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of every system (in turn; with --interleave, processes that each hold them all); "
                         "the table gives the medians of their timings")
    ap.add_argument("--interleave", action="store_true",
                    help="all systems in one process, timed round by round (see above); ratios with 95%% intervals")
    ap.add_argument("--block", type=int, default=3,
                    help="--interleave: timed training steps per system and round (after one untimed step)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (default 2: this project's machine); the recipe's stage 5 gives each "
                         "training job nproc / jobs threads, 1 on a 2-core machine (local/recipe_lib.sh)")
    ap.add_argument("--json", type=str, default=None, help="also write the configuration and all results here")
    a = ap.parse_args()
    p = PRESETS[a.preset]
    if a.decode_passes < 1:
        ap.error(f"--decode_passes must be at least 1, got {a.decode_passes}")
    if a.block < 1:
        ap.error(f"--block must be at least 1, got {a.block}")
    if a.interleave and a.steps and a.steps % a.block:
        ap.error(f"--interleave times --steps in rounds of --block: {a.steps} is no multiple of {a.block}")
    if a.interleave and a.sweep:
        ap.error("--interleave times the systems of the main table; the --sweep runs its points one by one")
    cfg = dict(p, steps=a.steps, pool=a.pool, no_cache=a.no_cache, beams=a.beams, threads=a.threads,
               **({"block": a.block} if a.interleave else {}),
               decode_passes=a.decode_passes,
               decode_utts=a.decode_utts or p["decode_utts"], decode_batch=a.decode_batch or p["decode_batch"])
    print(f"# preset {a.preset}: {json.dumps(p)}")
    print(f"# encoder outputs {'recomputed every step (--no_cache)' if a.no_cache else 'cached by utt_id'}; "
          f"{a.steps} timed steps over a pool of {a.pool} batches; torch {torch.__version__}, {a.threads} threads")
    rows = main_sweep(a, cfg) if a.sweep else main_systems(a, cfg)
    if a.json:
        Path(a.json).write_text(json.dumps({"config": cfg, "sweep": a.sweep, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
