"""95% bootstrap intervals of every system's figures, and of the paired differences the claims rest on.

Each draw resamples the utterances of every test set with replacement (1,000 draws, a fixed seed);
the same draw of a set is used for every system, so a difference between two systems is paired
over the same utterances (which is why every system must have scored the same utterances). A
system's accent average in a draw is the unweighted mean of its nine accent-set CERs in that draw,
as in the table. The interval is the 2.5 and 97.5 percentiles of the draws.

- per system: accent average, source CER, and the source CER's difference from the baseline (its
  "degradation" of the source domain);
- paired: the main system (e.g. ``hdmole``) minus each other system, for the accent average and
  for the source CER. hdmole's source degradation minus full fine-tuning's is the same number as
  the difference of their source CERs (the baseline cancels).

A difference whose interval holds 0 is a tie within the CI.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import cer_bootstrap

DRAWS, SEED = 1000, 0
Interval = Tuple[float, float, float]  # point estimate, lower, upper


class IntervalError(ValueError):
    """Systems that cannot be compared utterance by utterance; the message names the files."""


def per_utt_path(sys_dir: Path, test_set: str) -> Path:
    return sys_dir / f"decode_{test_set}" / "score_cer" / "per_utt.txt"


def load_scores(sys_dir: Path, sets: Sequence[str]) -> Optional[Dict[str, Tuple[List[str], np.ndarray]]]:
    """{set: (sorted ids, scores in that order)}, or None when a set has no per_utt.txt."""
    out = {}
    for s in sets:
        p = per_utt_path(sys_dir, s)
        if not p.is_file():
            return None
        ids, scores = cer_bootstrap.read_scored(p)
        order = np.argsort(ids, kind="stable")
        out[s] = ([ids[i] for i in order], scores[order])
    return out


def check_aligned(loaded: Dict[str, dict], sets: Sequence[str], dirs: Dict[str, Path]) -> Dict[str, List[str]]:
    """{set: ids} shared by every system; IntervalError naming both files when two systems differ."""
    ref: Dict[str, Tuple[str, List[str]]] = {}
    for name, scores in loaded.items():
        for s in sets:
            ids = scores[s][0]
            if s not in ref:
                ref[s] = (name, ids)
            elif ids != ref[s][1]:
                other = ref[s][0]
                missing = sorted(set(ref[s][1]) ^ set(ids))[:3]
                raise IntervalError(
                    f"{s}: systems `{other}` ({per_utt_path(dirs[other], s)}) and `{name}` "
                    f"({per_utt_path(dirs[name], s)}) scored different utterances (e.g. {missing}); "
                    f"paired intervals need the same ones: re-run stage 6 for both")
    return {s: ids for s, (_, ids) in ref.items()}


def draw_indices(sizes: Dict[str, int], draws: int = DRAWS, seed: int = SEED) -> Dict[str, np.ndarray]:
    """{set: (draws, utterances) indices}: one resampling of each set, shared by all systems."""
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, n, size=(draws, n)) for s, n in sizes.items()}


def summarise(point: float, values: np.ndarray) -> Interval:
    lo, hi = cer_bootstrap.interval(values)
    return float(point), lo, hi


def side(iv: Interval) -> int:
    """-1 when the interval lies below 0, +1 above 0, 0 when it holds 0."""
    _, lo, hi = iv
    return -1 if hi < 0 else 1 if lo > 0 else 0


def verdict(iv: Optional[Interval], main: str) -> str:
    """Of a CER difference main minus other: 'main better' when its interval lies below 0, 'main
    worse' above 0, else 'tie within CI'."""
    if iv is None:
        return "-"
    return {-1: f"{main} better", 1: f"{main} worse", 0: "tie within CI"}[side(iv)]


def empty(skipped: Sequence[str], draws: int = DRAWS, seed: int = SEED) -> dict:
    """The result of ``compute`` with no interval: every system in ``skipped``."""
    return {"systems": {}, "pairs": {}, "skipped": list(skipped), "draws": draws, "seed": seed}


def compute(dirs: Dict[str, Path], accents: Sequence[str], source_set: str, baseline: Optional[str],
            mains: Sequence[str], draws: int = DRAWS, seed: int = SEED) -> dict:
    """Intervals of the systems in ``dirs`` (name -> system dir) that scored every set.

    Returns {"systems": {name: {"accent_avg", "source", "delta_source"}: Interval or None, and
    "sets": {test set: Interval of its CER}},
    "pairs": {main: {other: {"accent_avg", "source"}: Interval of main minus other}} for each of
    ``mains`` that scored every set, "skipped": systems without every set scored}.
    """
    acc_sets = [f"test_{a}" for a in accents]
    sets = acc_sets + [source_set]
    loaded, skipped = {}, []
    for name, d in dirs.items():
        scores = load_scores(d, sets)
        if scores is None:
            skipped.append(name)
        else:
            loaded[name] = scores
    out = empty(skipped, draws, seed)
    if not loaded:
        return out
    ids = check_aligned(loaded, sets, dirs)
    idx = draw_indices({s: len(ids[s]) for s in sets}, draws, seed)
    per_set, set_point, acc_draws, src_draws, acc_point, src_point = {}, {}, {}, {}, {}, {}
    for name, scores in loaded.items():
        per_set[name] = {s: cer_bootstrap.cer_of_draws(scores[s][1], idx[s]) for s in sets}
        set_point[name] = {s: cer_bootstrap.cer(scores[s][1]) for s in sets}
        acc_draws[name] = np.mean([per_set[name][s] for s in acc_sets], axis=0)
        acc_point[name] = float(np.mean([set_point[name][s] for s in acc_sets]))
        src_draws[name] = per_set[name][source_set]
        src_point[name] = set_point[name][source_set]
    for name in loaded:
        delta = None
        if baseline in loaded and name != baseline:
            delta = summarise(src_point[name] - src_point[baseline], src_draws[name] - src_draws[baseline])
        out["systems"][name] = {"accent_avg": summarise(acc_point[name], acc_draws[name]),
                                "source": summarise(src_point[name], src_draws[name]),
                                "delta_source": delta,
                                "sets": {s: summarise(set_point[name][s], per_set[name][s]) for s in sets}}
    for m in dict.fromkeys(mains):
        if m in loaded:
            out["pairs"][m] = {name: {
                "accent_avg": summarise(acc_point[m] - acc_point[name], acc_draws[m] - acc_draws[name]),
                "source": summarise(src_point[m] - src_point[name], src_draws[m] - src_draws[name]),
            } for name in loaded if name != m}
    return out


def restrict(res: dict, shown: Sequence[str], mains: Sequence[str]) -> dict:
    """The part of ``compute``'s result that the tables show: the systems in ``shown`` (those
    without every set scored among them), and the paired differences of ``mains`` against them
    (e.g. without the runs of other seeds)."""
    keep = set(shown)
    return {**res, "systems": {n: r for n, r in res["systems"].items() if n in keep},
            "skipped": [n for n in res["skipped"] if n in keep],
            "pairs": {m: {n: r for n, r in others.items() if n in keep}
                      for m, others in res["pairs"].items() if m in set(mains) and m in keep}}


def fmt(iv: Optional[Interval], signed: bool = False) -> Tuple[str, str]:
    """(point, '[lo, hi]') as table cells."""
    if iv is None:
        return "-", "-"
    p, lo, hi = iv
    f = "{:+.2f}" if signed else "{:.2f}"
    return f.format(p), f"[{f.format(lo)}, {f.format(hi)}]"


def markdown(res: dict, source_set: str, baseline: Optional[str]) -> List[str]:
    """The '## Confidence intervals' and '## Paired differences' sections of exp/RESULTS.md."""
    if not res["systems"]:
        return []
    L = ["## Confidence intervals", "",
         f"95% bootstrap intervals: {res['draws']:,} draws of the utterances of each test set (seed "
         f"{res['seed']}), the same draws for every system. accent avg = mean of the accent sets' CERs; "
         f"source = {source_set}; Δ source = source CER minus that of `{baseline}`, paired.", ""]
    rows = []
    for name, r in res["systems"].items():
        rows.append("| " + " | ".join([name, *fmt(r["accent_avg"]), *fmt(r["source"]), *fmt(r["delta_source"], True)]) + " |")
    L += ["| system | accent avg | 95% CI | source | 95% CI | Δ source | 95% CI |",
          "|---|---:|---:|---:|---:|---:|---:|", *rows]
    if res["skipped"]:
        L += ["", "Not every set scored (no interval): " + ", ".join(f"`{n}`" for n in res["skipped"]) + "."]
    if any(res["pairs"].values()):
        L += ["", "## Paired differences", "",
              "A system minus each other system, in CER points over the same utterances (negative: the "
              "first is better), with the 95% interval of the difference; 'tie within CI' when the "
              "interval holds 0. The source column is also the difference of the two systems' source "
              "degradations."]
        for m, others in res["pairs"].items():
            L += ["", f"| {m} minus | Δ accent avg | 95% CI | verdict | Δ source | 95% CI | verdict |",
                  "|---|---:|---:|---|---:|---:|---|"]
            for name, r in others.items():
                a, s = r["accent_avg"], r["source"]
                L.append("| " + " | ".join([name, *fmt(a, True), verdict(a, m), *fmt(s, True), verdict(s, m)]) + " |")
    return L + [""]
