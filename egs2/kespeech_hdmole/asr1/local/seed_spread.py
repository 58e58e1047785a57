"""The spread over training seeds: hdmole.sh --train_seeds "1 2" runs every stage-5 system again
into exp/<system>_seed<k>; this groups each system with its seed runs and reports, per group, the
accent average and the source CER of every run, their mean and their sample standard deviation.
The seed runs appear only here and in the claims' per-seed verdicts (local/claims.py), not as rows
of the systems table, its intervals or its plots.

The bootstrap intervals (local/system_intervals.py) cover the test utterances of one training run;
this covers the training runs themselves.
"""
import re
from typing import Dict, List, Sequence

import numpy as np

SEED_RUN = re.compile(r"^(?P<base>.+)_seed(?P<seed>\d+)$")


def seed_runs(names: Sequence[str]) -> Dict[str, int]:
    """{seed run: its seed} for the names that are another seed's run of a system among the names."""
    out = {}
    for n in names:
        m = SEED_RUN.match(n)
        if m and m.group("base") in names:
            out[n] = int(m.group("seed"))
    return out


def groups(names: Sequence[str]) -> Dict[str, List[str]]:
    """{system: [system, system_seed<k>, ...]} for the systems that have seed runs, in table order."""
    out: Dict[str, List[str]] = {}
    for n in seed_runs(names):
        base = SEED_RUN.match(n).group("base")
        out.setdefault(base, [base]).append(n)
    return out


def spread(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return f"{v.mean():.2f} ± {sd:.2f}"


def markdown(systems: Sequence[dict]) -> List[str]:
    """The '## Seeds' section ([] without seed runs); systems: make_results' system dicts."""
    by = {s["name"]: s for s in systems}
    rows = []
    for base, runs in groups(list(by)).items():
        done = [by[r] for r in runs if by[r]["accent_avg"] is not None and by[r]["source_cer"] is not None]
        if len(done) < 2:
            continue
        rows.append(f"| {base} | {len(done)} | "
                    + ", ".join(f"{s['accent_avg']:.2f}" for s in done) + f" | {spread([s['accent_avg'] for s in done])} | "
                    + ", ".join(f"{s['source_cer']:.2f}" for s in done) + f" | {spread([s['source_cer'] for s in done])} |")
    if not rows:
        return []
    return ["## Seeds", "",
            "Each system with its runs of other training seeds (`<system>_seed<k>`, hdmole.sh --train_seeds): "
            "the figure of every run (the system's own first), then mean ± sample standard deviation.", "",
            "| system | runs | accent avg per run | accent avg | source CER per run | source CER |",
            "|---|---:|---|---:|---|---:|", *rows, ""]
