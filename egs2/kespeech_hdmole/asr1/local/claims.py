"""The paper's claims, each judged on this run from the paired intervals (local/system_intervals.py).

Every verdict is computed here from the same per-utterance scores as the tables, so the README's
sentences cannot drift from the results:

- "holds": the 95% interval of the difference lies on the side the claim says;
- "does not hold": it lies on the other side;
- "tie within CI": it holds 0 (for a claim that two systems match, that is what it says).

A claim whose systems did not run is listed as "not judged", with the reason. Where both systems
also ran with other training seeds (hdmole.sh --train_seeds: `<system>_seed<k>`), the claim is
judged again on each seed's pair of runs, and the table says on how many runs each verdict came out.
"""
from collections import Counter
from typing import Dict, List, Optional, Sequence

import system_intervals

# main, other: systems ("full" stands for make_results' --full_ft_system); metric: accent_avg | source (CER, lower is better) | share (trainable %);
# side: what the claim says of main minus other: "lower" (main better) or "match"
CLAIMS = (
    {"text": "HDMoLE on the projector matches full fine-tuning on the target accents",
     "main": "hdmole_proj", "other": "full", "metric": "accent_avg", "side": "match"},
    {"text": "... with 9.6% of full fine-tuning's trainable parameters",
     "main": "hdmole_proj", "other": "full", "metric": "share", "paper": 9.6},
    {"text": "HDMoLE on the projector degrades the source domain less than full fine-tuning",
     "main": "hdmole_proj", "other": "full", "metric": "source", "side": "lower"},
    {"text": "HDMoLE (projector and LLM) beats LoRA of the same rank on the target accents",
     "main": "hdmole", "other": "lora", "metric": "accent_avg", "side": "lower"},
    {"text": "hierarchical routing (the accent-ID global router) helps on the target accents",
     "main": "hdmole", "other": "hdmole_nohier", "metric": "accent_avg", "side": "lower"},
    {"text": "the dynamic threshold beats static top-k routing on the target accents",
     "main": "hdmole", "other": "hdmole_topk", "metric": "accent_avg", "side": "lower"},
    {"text": "HDMoLE degrades the source domain less than full fine-tuning",
     "main": "hdmole", "other": "full", "metric": "source", "side": "lower"},
)
METRIC_NAMES = {"accent_avg": "accent avg CER", "source": "source CER"}


def judge(iv: system_intervals.Interval, claimed: str) -> str:
    """The verdict of a claim that says ``claimed`` ("lower" or "match") of main minus other."""
    s = system_intervals.side(iv)
    if s == 0:
        return "tie within CI"
    if claimed == "match":
        return "holds (better)" if s < 0 else "does not hold"
    return "holds" if s < 0 else "does not hold"


def main_systems(seeds: Sequence[int] = ()) -> List[str]:
    """The systems whose paired differences the claims read (make_results always computes them),
    with their runs of the given other seeds."""
    mains = list(dict.fromkeys(c["main"] for c in CLAIMS))
    return mains + [f"{m}_seed{k}" for k in seeds for m in mains]


def judged(intervals: dict, main: str, other: str, c: dict) -> Optional[dict]:
    """{figures, verdict} of claim c on the pair main - other, or None without their interval."""
    pair = intervals["pairs"].get(main, {}).get(other)
    if pair is None:
        return None
    iv = pair[c["metric"]]
    point, ci = system_intervals.fmt(iv, signed=True)
    return {"figures": f"Δ {METRIC_NAMES[c['metric']]} {point} {ci}", "difference": f"{point} {ci}",
            "verdict": judge(iv, c["side"])}


def share(systems: dict, main: str, other: str) -> Optional[float]:
    a, b = systems.get(main), systems.get(other)
    if not a or not b or not a.get("params") or not b.get("params") or not b["params"]["trainable"]:
        return None
    return 100.0 * a["params"]["trainable"] / b["params"]["trainable"]


def verdicts(intervals: dict, systems: dict, full_ft: str = "full", seeds: Sequence[int] = ()) -> List[dict]:
    """[{text, comparison, figures, verdict, seeds}] for each claim; systems: name -> the system dict
    of make_results (for the trainable counts); full_ft: the full fine-tuning system's name; seeds:
    the other training seeds whose runs are judged too ("seeds": {seed: {figures, verdict}} of the
    seeds where both systems ran)."""
    out = []
    for c in CLAIMS:
        m, o = c["main"], full_ft if c["other"] == "full" else c["other"]
        row = {"text": c["text"], "comparison": f"`{m}` vs `{o}`", "seeds": {}}
        if c["metric"] == "share":
            s = share(systems, m, o)
            if s is None:
                row.update(figures="-", verdict=f"not judged: `{m}` or `{o}` has no params.json")
            else:
                row.update(figures=f"{s:.2f}% (paper: {c['paper']}%)",
                           verdict="holds" if s <= c["paper"] else "does not hold")
            out.append(row)
            continue
        j = judged(intervals, m, o, c)
        if j is None:
            row.update(figures="-", verdict=f"not judged: `{m}` or `{o}` did not score every test set")
        else:
            row.update(figures=j["figures"], verdict=j["verdict"])
            for k in seeds:
                js = judged(intervals, f"{m}_seed{k}", f"{o}_seed{k}", c)
                if js is not None:
                    row["seeds"][k] = js
        out.append(row)
    return out


def seed_summary(row: dict) -> str:
    """'does not hold on 3 of 3 runs', or each verdict's count when the runs disagree ('-' without seeds)."""
    if not row["seeds"]:
        return "-"
    counts: Dict[str, int] = Counter([row["verdict"]] + [j["verdict"] for j in row["seeds"].values()])
    n = sum(counts.values())
    return "; ".join(f"{v} on {c} of {n} runs" for v, c in counts.most_common())


def markdown(rows: Sequence[dict]) -> List[str]:
    """The '## Claims of the paper' section of exp/RESULTS.md."""
    if not rows:
        return []
    with_seeds = any(r["seeds"] for r in rows)
    L = ["## Claims of the paper", "",
         "Each judged from the 95% interval of the paired difference (first system minus second, CER "
         "points; negative: the first is better): 'holds' when the interval lies on the claim's side, "
         "'does not hold' on the other side, 'tie within CI' when it holds 0. The intervals cover the "
         "test utterances of one training run per system"
         + ("; the last two columns judge the claim again on the runs of the other training seeds "
            "(`<system>_seed<k>` against `<other>_seed<k>`), and count each verdict over all runs." if with_seeds
            else ", not the spread over training runs (hdmole.sh --train_seeds measures that)."), ""]
    if with_seeds:
        L += ["| claim | systems | figures | verdict | other seeds | over all runs |", "|---|---|---|---|---|---|"]
        for r in rows:
            other = "; ".join(f"seed {k}: {j['difference']} {j['verdict']}"
                              for k, j in sorted(r["seeds"].items())) or "-"
            L.append(f"| {r['text']} | {r['comparison']} | {r['figures']} | {r['verdict']} | {other} | {seed_summary(r)} |")
    else:
        L += ["| claim | systems | figures | verdict |", "|---|---|---|---|"]
        L += [f"| {r['text']} | {r['comparison']} | {r['figures']} | {r['verdict']} |" for r in rows]
    return L + [""]
