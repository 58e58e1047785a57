"""The accent effect on one system, usually the source model before any fine-tuning: each accent's
CER against test_Mandarin's (same channel, standard Mandarin, other speakers and sentences),
with 95% bootstrap intervals (local/cer_bootstrap.py), and test_Mandarin against the clean
source_test. Written into exp/RESULTS.md by local/make_results.py; an accent whose interval
excludes 0 is measurably harder (or easier) than standard Mandarin for that system.
"""
from pathlib import Path
from typing import List, Optional, Sequence

import cer_bootstrap

HEADING = "## The accent effect on the source model"


def markdown(sys_dir: Path, name: str, accents: Sequence[str], source_set: str,
             reference: str = "Mandarin") -> List[str]:
    """Lines of the section ([] when test_<reference> was not scored for this system)."""
    def scores(s: str) -> Optional[object]:
        p = sys_dir / f"decode_{s}" / "score_cer" / "per_utt.txt"
        return cer_bootstrap.read_per_utt(p) if p.is_file() else None

    ref = scores(f"test_{reference}")
    if ref is None:
        return []
    L = ["", HEADING, "",
         f"System `{name}`: CER in % per accent set, its difference from test_{reference} in points "
         f"with a 95% bootstrap interval (1,000 draws of the utterances of each set), and whether "
         f"the interval excludes 0. {source_set} is clean; the test sets share one channel.", "",
         f"| set | CER | Δ vs test_{reference} | 95% interval | measurably different |",
         "|---|---:|---:|---:|---|"]
    for a in accents:
        s = scores(f"test_{a}")
        if s is None:
            continue
        if a == reference:
            L.append(f"| test_{a} | {cer_bootstrap.cer(s):.2f} | 0 | - | (reference) |")
            continue
        d, lo, hi = cer_bootstrap.difference(s, ref)
        verdict = "harder" if lo > 0 else "easier" if hi < 0 else "no (a tie)"
        L.append(f"| test_{a} | {cer_bootstrap.cer(s):.2f} | {d:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {verdict} |")
    src = scores(source_set)
    if src is not None:
        r, lo, hi = cer_bootstrap.ratio(ref, src)
        L += ["", f"test_{reference} / {source_set} CER ratio: "
              + ("-" if r is None else f"{r:.2f} (95% interval {lo:.2f}-{hi:.2f})")
              + f"; {source_set} CER {cer_bootstrap.cer(src):.2f}."]
    return L
