"""Bootstrap intervals of CERs from the per-utterance scores of local/score_cer.py (per_utt.txt).

A set's CER is (sum of errors) / (sum of reference characters) over its utterances; a bootstrap
draw resamples the utterances with replacement (1,000 draws, a fixed seed) and the 95% interval
is the 2.5 and 97.5 percentiles of the draws. The difference of two sets with different
utterances (e.g. test_Southwestern against test_Mandarin) resamples each set on its own.
"""
import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

SCORES = re.compile(r"^Scores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)\s*$")


class ScoreFileError(ValueError):
    """per_utt.txt does not hold what score_cer.py writes; the message names the file and line."""


ID_LINE = re.compile(r"^id: \((.*)\)\s*$")


def read_per_utt(path: Path) -> np.ndarray:
    """(utterances, 2) int array: errors (S+D+I) and reference characters (C+S+D) per utterance."""
    return read_scored(path)[1]


def read_scored(path: Path) -> Tuple[List[str], np.ndarray]:
    """(utterance ids, (utterances, 2) int array of errors and reference characters), in file order."""
    ids: List[str] = []
    rows = []
    uid = None
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        m = ID_LINE.match(line)
        if m is not None:
            uid = m.group(1)
        elif line.startswith("Scores:"):
            m = SCORES.match(line)
            if m is None:
                raise ScoreFileError(f"{path}:{n}: expected 'Scores: (#C #S #D #I) c s d i', got {line!r}")
            if uid is None:
                raise ScoreFileError(f"{path}:{n}: a 'Scores:' line without an 'id: (...)' line before it")
            c, s, d, i = map(int, m.groups())
            ids.append(uid)
            rows.append((s + d + i, c + s + d))
            uid = None
    if not rows:
        raise ScoreFileError(f"{path}: no 'Scores:' lines (not a per_utt.txt of local/score_cer.py?)")
    if len(set(ids)) != len(ids):
        dup = next(u for u in ids if ids.count(u) > 1)
        raise ScoreFileError(f"{path}: utterance {dup!r} is scored more than once")
    return ids, np.array(rows, dtype=np.int64)


def cer_draws(scores: np.ndarray, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """CER in % of each bootstrap draw of the utterances."""
    rng = np.random.default_rng(seed)
    return cer_of_draws(scores, rng.integers(0, len(scores), size=(draws, len(scores))))


def cer_of_draws(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """CER in % of each draw given as a row of utterance indices into ``scores``."""
    picked = scores[idx]
    return 100.0 * picked[..., 0].sum(1) / np.maximum(picked[..., 1].sum(1), 1)


def interval(values: np.ndarray) -> Tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def cer(scores: np.ndarray) -> float:
    return 100.0 * scores[:, 0].sum() / max(scores[:, 1].sum(), 1)


def difference(a: np.ndarray, b: np.ndarray, draws: int = 1000, seed: int = 0) -> Tuple[float, float, float]:
    """CER(a) - CER(b) in points and its 95% interval, the two sets resampled independently."""
    d = cer_draws(a, draws, seed) - cer_draws(b, draws, seed + 1)
    lo, hi = interval(d)
    return cer(a) - cer(b), lo, hi


def ratio(a: np.ndarray, b: np.ndarray, draws: int = 1000, seed: int = 0) -> Tuple[Optional[float], float, float]:
    """CER(a) / CER(b) and its 95% interval (None when CER(b) is 0)."""
    if cer(b) == 0:
        return None, float("nan"), float("nan")
    r = cer_draws(a, draws, seed) / np.maximum(cer_draws(b, draws, seed + 1), 1e-9)
    lo, hi = interval(r)
    return cer(a) / cer(b), lo, hi
