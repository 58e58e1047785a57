"""The accent-ID head (HDMoLE's global router) in the results: its confusion matrices, on the dev
set (train_stats.json, written by espnet_hdmole.bin.model_info) and over every test set (the accents that
stage 6's decoding predicted, decode_test_<accent>/1best_recog/accent), their accuracies, a table of
per-accent recall and a plot. Used by local/make_results.py.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from package_modules import package_module  # local/ (on sys.path through make_results.py)

kaldi_table = package_module("utils.kaldi_table")


class AccentIDError(ValueError):
    """A file that does not hold what it should; the message names it."""


def test_confusion(sys_dir: Path, accents: Sequence[str]) -> Optional[np.ndarray]:
    """Counts (true accent x predicted accent) over the decoded test_<accent> sets; None when no
    decoding wrote predicted accents."""
    index = {a: i for i, a in enumerate(accents)}
    counts = np.zeros((len(accents), len(accents)), dtype=np.int64)
    found = False
    for a in accents:
        path = sys_dir / f"decode_test_{a}" / "1best_recog" / "accent"
        if not path.is_file():
            continue
        found = True
        table = kaldi_table.read_table(path, "accent", single_token=True, error=AccentIDError)
        for uid, pred in table.items():
            if pred not in index:
                raise AccentIDError(f"{table.where(uid)}: expected '<utterance-id> <accent>' with an accent of "
                                    f"{list(accents)}, got {uid + ' ' + pred!r}")
            counts[index[a], index[pred]] += 1
    return counts if found else None


def dev_confusion(train_stats: Optional[dict], accents: Sequence[str], path: Path) -> Optional[np.ndarray]:
    """The dev-set counts of train_stats.json, in the order of ``accents``; None if absent."""
    conf = (train_stats or {}).get("accent_confusion")
    if conf is None:
        return None
    names, counts = conf.get("accents"), np.asarray(conf.get("counts"))
    if not isinstance(names, list) or counts.shape != (len(names), len(names)):
        raise AccentIDError(f"{path}: 'accent_confusion' needs 'accents' and a square 'counts' of that size")
    if sorted(names) != sorted(accents):
        raise AccentIDError(f"{path}: 'accent_confusion' lists the accents {names}, expected {list(accents)}")
    order = [names.index(a) for a in accents]
    return counts[np.ix_(order, order)].astype(np.int64)


def accuracy(counts: Optional[np.ndarray]) -> Optional[float]:
    return float(np.trace(counts)) / counts.sum() if counts is not None and counts.sum() else None


def recall(counts: np.ndarray) -> List[Optional[float]]:
    return [float(counts[i, i]) / counts[i].sum() if counts[i].sum() else None for i in range(len(counts))]


def markdown(confusions: Dict[str, Optional[np.ndarray]], accents: Sequence[str], plot: Optional[str]) -> List[str]:
    """Lines of a system's RESULTS.md: accuracy and per-accent recall (%) on each set."""
    sets = [k for k, v in confusions.items() if v is not None]
    if not sets:
        return []
    chance = 100.0 / len(accents)
    L = ["", "## Accent ID (the global router)", "",
         "Accuracy of the accent head's top accent, in % (chance " + f"{chance:.1f}): "
         + "; ".join(f"{k} {100 * accuracy(confusions[k]):.2f}" for k in sets) + ". Recall per accent:", ""]
    L.append("| accent | " + " | ".join(sets) + " |")
    L.append("|---|" + "---:|" * len(sets))
    recalls = {k: recall(confusions[k]) for k in sets}
    for i, a in enumerate(accents):
        L.append(f"| {a} | " + " | ".join("-" if recalls[k][i] is None else f"{100 * recalls[k][i]:.1f}" for k in sets) + " |")
    if plot:
        L += ["", f"![accent ID confusion]({plot})"]
    return L


def plot(confusions: Dict[str, Optional[np.ndarray]], accents: Sequence[str], path: Path) -> bool:
    """Row-normalised confusion matrices side by side (rows: true accent); False if none."""
    sets = [k for k, v in confusions.items() if v is not None]
    if not sets:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 4.6), squeeze=False)
    for ax, k in zip(axes[0], sets):
        c = confusions[k].astype(float)
        share = c / np.maximum(c.sum(1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(accents)):
            for j in range(len(accents)):
                if c[i, j]:
                    ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(accents)), accents, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(accents)), accents, fontsize=8)
        ax.set_xlabel("predicted accent")
        ax.set_ylabel("true accent")
        ax.set_title(f"{k}: accuracy {100 * accuracy(confusions[k]):.1f}% (row %)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
