"""Timing one stage-5 system of benchmarks/bench_llm_asr.py (``TimedSystem``: its decoding passes
and training steps), alone or interleaved with others in one process (``interleaved_run``), and
the paired ratio of two systems' timings with a bootstrap interval (``paired_ratio``).

Interleaving: every system is built in the same process; then, round after round, each system
in turn (the order rotating from round to round) runs one untimed step and ``block`` timed steps
(decoding: a short untimed decoding, then one timed pass per beam). A drift of the machine's speed, which moves the timings of
separate processes by +-20% on a shared virtual machine, then reaches every system of a round
alike, and the ratio of two systems' figures of the same round is paired. The untimed work
first puts the system's own weights back in the cache, as a step of a system run alone finds
them.

The interval of a ratio resamples the runs (processes) and then the rounds within each: with the
usual 3 runs its first level has only 3 clusters to draw from, so the interval is on the narrow
side of the truth; with fewer than 2 paired figures there is none.
"""
import random
import statistics
import time
from typing import Dict, List, Sequence

import torch

from llm_asr_systems import build, make_batches  # (beside this script)

# a training step's phases, as timed: the model's forward (loss included); zero_grad and
# backward; gradient clipping and the optimiser's update
PHASES = ("forward_s", "backward_s", "update_s")


class TimedSystem:
    """A system built as the trainer has it, with its decoding batches, its training pool and its
    optimiser; ``decode_pass`` and ``step`` time one decoding pass and one training step."""

    def __init__(self, cfg: dict, name: str, spec: dict, workdir: str):
        t0 = time.perf_counter()
        torch.manual_seed(0)
        self.cfg, self.name = cfg, name
        self.model, rep, vocab = build(cfg, spec, workdir)
        self.info = {"system": name, "trainable": rep["trainable"], "share": rep["share"],
                     "adapter_conf": spec.get("adapter_conf"), "build_s": time.perf_counter() - t0}
        n_dom = len(spec["accent_list"])
        self.dec = make_batches(cfg, -(-cfg["decode_utts"] // cfg["decode_batch"]), cfg["decode_batch"], n_dom,
                                vocab, seed=2, prefix="dec")
        self.audio_s = sum(float(b["speech_lengths"].sum()) for _, b in self.dec) * 0.01
        self.pool = make_batches(cfg, cfg["pool"], cfg["batch"], n_dom, vocab, seed=1, prefix="tr")
        self.spec, self.opt, self.next = spec, None, 0

    def decode_pass(self, beam: int):
        """(RTF, tokens per utterance) of one pass over the decoding batches. Decoded before any
        training, the adapters are at their initialisation (B = 0): every system decodes the same
        tokens as the same base model."""
        self.model.eval()
        t0, n_tok = time.perf_counter(), 0
        for _, b in self.dec:
            hyps = self.model.recognize(b["speech"], b["speech_lengths"], beam_size=beam,
                                        max_new_tokens=self.cfg["text_len"] + 1)
            n_tok += sum(len(h["token_ids"]) for h in hyps)
        return (time.perf_counter() - t0) / self.audio_s, n_tok / (len(self.dec) * self.cfg["decode_batch"])

    def warm_decoding(self, beam: int) -> None:
        b0 = self.dec[0][1]
        self.model.eval()
        self.model.recognize(b0["speech"][:2], b0["speech_lengths"][:2], beam_size=beam, max_new_tokens=2)

    def start_training(self) -> List[float]:
        """The recipe's optimiser (its optim and optim_conf, with the task's fused update on the CPU),
        then the untimed pass over the pool, which fills the encoder-output cache as the first
        epoch does; returns that pass's step times."""
        from espnet2.tasks.abs_task import optim_classes

        from espnet_hdmole.tasks.llm_asr import fused_on_cpu

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optim = self.spec.get("optim", "adam")
        self.opt = optim_classes[optim](self.params, **fused_on_cpu(optim, self.spec.get("optim_conf"), self.params))
        self.grad_clip = self.spec.get("grad_clip", 5.0)
        fill = [sum(self.step()) for _ in self.pool]
        self.info["cached_utts"] = len(self.model._enc_cache)
        return fill

    def step(self, advance: bool = True):
        """One training step on the next batch of the pool, as the ESPnet trainer runs it:
        model(**batch, utt_id=[...]), zero_grad, backward, clip_grad_norm_, the optimiser's step.
        Returns its phases: (forward, zero_grad + backward, clipping + update) in seconds.
        ``advance=False`` leaves the next step on the same batch (a warm-up step)."""
        ids, b = self.pool[self.next % len(self.pool)]
        self.next += advance
        self.model.train()
        t0 = time.perf_counter()
        loss, _, _ = self.model(**b, **({} if self.cfg["no_cache"] else {"utt_id": ids}))
        t1 = time.perf_counter()
        self.opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        return t1 - t0, t2 - t1, time.perf_counter() - t2


def summarise_steps(res: dict, phases: Sequence[Sequence[float]]) -> None:
    """A system's step figures from its timed steps' phases: step_s (the median step),
    step_s_all, each phase's own median, phases_all."""
    times = [sum(ph) for ph in phases]
    res["step_s"], res["step_s_all"] = statistics.median(times), times
    for j, key in enumerate(PHASES):  # where a step's time goes
        res[key] = statistics.median(ph[j] for ph in phases)
    res["phases_all"] = [list(ph) for ph in phases]


def interleaved_run(cfg: dict, specs: Dict[str, dict], workdir: str, block: int) -> Dict[str, dict]:
    """Every system of ``specs`` ({name: merged config}) built in this process and timed in
    rounds (module docstring): ``cfg["decode_passes"]`` rounds of decoding, then
    ``cfg["steps"] // block`` rounds of training. Per system, besides the figures of a separate
    run: ``rtf_beamK_passes`` (one pass per round) and ``step_s_rounds`` (each round's mean timed
    step), paired across systems by their index."""
    systems = {n: TimedSystem(cfg, n, s, f"{workdir}/{n}") for n, s in specs.items()}
    names = list(systems)
    res = {n: dict(ts.info) for n, ts in systems.items()}

    def order(r):
        return names[r % len(names):] + names[:r % len(names)]

    for beam in cfg["beams"]:
        for ts in systems.values():
            ts.warm_decoding(beam)
        passes = {n: [] for n in names}
        for r in range(cfg["decode_passes"]):
            for n in order(r):
                systems[n].warm_decoding(beam)  # untimed: the system's weights back in the cache
                rtf, tok = systems[n].decode_pass(beam)
                passes[n].append(rtf)
                res[n][f"tokens_per_utt_beam{beam}"] = tok
        for n in names:
            res[n][f"rtf_beam{beam}"] = statistics.median(passes[n])
            res[n][f"rtf_beam{beam}_passes"] = passes[n]
    if cfg["steps"] > 0:
        for n in names:
            res[n]["first_pass_step_s"] = statistics.median(systems[n].start_training())
            res[n]["cached_utts"] = systems[n].info["cached_utts"]
        phases, rounds = {n: [] for n in names}, {n: [] for n in names}
        for r in range(cfg["steps"] // block):
            for n in order(r):
                ts = systems[n]
                ts.step(advance=False)  # untimed, on the batch the round starts with: the weights back in the cache
                got = [ts.step() for _ in range(block)]
                phases[n] += got
                rounds[n].append(sum(map(sum, got)) / block)
        for n in names:
            summarise_steps(res[n], phases[n])
            res[n]["step_s_rounds"] = rounds[n]
    return res


def paired_ratio(runs_a: Sequence[Sequence[float]], runs_b: Sequence[Sequence[float]], resamples: int = 2000,
                 seed: int = 0) -> dict:
    """The ratio a / b of two systems' paired figures (per run, per round): ``median``, the median
    of every round's ratio; ``ci``, a 95% interval for it by a two-level bootstrap (the runs
    resampled, then the rounds within each: the rounds of one process share its state, so they
    are not independent draws; None for a single ratio); ``runs``, each run's median ratio."""
    ratios = [[x / y for x, y in zip(ra, rb)] for ra, rb in zip(runs_a, runs_b)]
    pooled_all = [x for run in ratios for x in run]
    if len(pooled_all) < 2:  # one figure: no interval
        return {"median": pooled_all[0], "ci": None, "runs": [run[0] for run in ratios]}
    rng = random.Random(seed)
    meds = []
    for _ in range(resamples):
        pooled = []
        for run in rng.choices(ratios, k=len(ratios)):
            pooled += rng.choices(run, k=len(run))
        meds.append(statistics.median(pooled))
    meds.sort()
    lo, hi = meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]
    return {"median": statistics.median(pooled_all), "ci": (lo, hi),
            "runs": [statistics.median(run) for run in ratios]}


def target_verdict(ci: Sequence[float], target: float) -> str:
    """'met' where the whole interval lies within the target, 'not met' where it lies beyond it,
    else undecided: a ratio whose interval holds the target is a tie with it."""
    if ci is None:
        return "no verdict: one paired figure has no interval"
    lo, hi = ci
    return "met" if hi <= target else "not met" if lo > target else "undecided: the target lies in the interval"
