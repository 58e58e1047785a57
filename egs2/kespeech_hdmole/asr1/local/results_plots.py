"""The plots of local/make_results.py: CER per accent, and routing heat maps per adapted layer.

PNG files are byte-identical across runs for the same data (no version string in them).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


PNG_META = {"Software": None}  # no version string in the file: identical bytes across runs


def plot_cer(systems: Sequence[dict], accents: Sequence[str], path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    n = max(len(systems), 1)
    x = np.arange(len(accents))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(accents) + 2.0), 4.5))
    for i, s in enumerate(systems):
        vals = [s["result"][f"test_{a}"]["cer_pct"] if s["result"][f"test_{a}"] else np.nan
                for a in accents]
        xs = x - 0.4 + width * (i + 0.5)
        ax.bar(xs, vals, width, label=s["name"])
        if len(systems) * len(accents) <= 60:  # label bars, so 0.00 and "no result" differ
            for xi, v in zip(xs, vals):
                ax.annotate("n/a" if np.isnan(v) else f"{v:.1f}", (xi, 0.0 if np.isnan(v) else v),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                            fontsize=6, rotation=90 if n > 3 else 0)
    ax.set_xlim(-0.5, len(accents) - 0.5)  # missing (NaN) bars do not widen the axis
    ax.set_xticks(x)
    ax.set_xticklabels(accents, rotation=30, ha="right")
    ax.set_xlabel("accent (test set)")
    ax.set_ylabel("CER (%)")
    ax.set_title("CER per accent")
    if systems:
        ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_META)
    plt.close(fig)


def plot_routing(system: str, layer: str, L: dict, path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    w = np.asarray(L["mean_weight"], dtype=float)
    n_acc, n_exp = w.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * n_exp + 2.5), max(3.0, 0.45 * n_acc + 1.5)))
    im = ax.imshow(w, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-9))
    ax.set_xticks(range(n_exp))
    epd, nd = L.get("experts_per_domain"), L.get("num_domains")
    if (isinstance(epd, int) and isinstance(nd, int) and epd > 0 and nd == n_acc
            and nd * epd == n_exp):  # expert i belongs to domain i // experts_per_domain
        ax.set_xticklabels([f"E{i} {L['accents'][i // epd]}" for i in range(n_exp)],
                           rotation=45, ha="right")
        ax.set_xlabel("expert (its domain)")
    else:
        ax.set_xticklabels([f"E{i}" for i in range(n_exp)])
        ax.set_xlabel("expert")
    ax.set_yticks(range(n_acc))
    ax.set_yticklabels(L["accents"])
    ax.set_ylabel("accent")
    title = f"{system}: {layer}"
    if "mean_active" in L:
        title += f"\nmean active experts {L['mean_active']:.2f}"
    ax.set_title(title, fontsize="small")
    if n_acc * n_exp <= 144:
        thr = 0.5 * float(w.max())
        for i in range(n_acc):
            for j in range(n_exp):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if w[i, j] > thr else "white")
    fig.colorbar(im, ax=ax, label="mean routing weight")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_META)
    plt.close(fig)


def draw_routing_plots(systems: Sequence[dict], plot_names: Dict[Tuple[str, str], str], plots: Path) -> List[Path]:
    """One heat map per (system, adapted layer); returns their paths.

    A map is drawn again only when its data changed (~0.8 s each, and a model with adapters on
    every LLM linear has dozens): plots/.routing_keys.json remembers what each file shows."""
    files: List[Path] = []
    keys_file = plots / ".routing_keys.json"
    try:
        drawn = json.loads(keys_file.read_text())
    except (OSError, ValueError):
        drawn = {}
    for s in systems:
        if s["routing"] is None:
            continue
        for layer, L in s["routing"]["layers"].items():
            path = plots / plot_names[(s["name"], layer)]
            key = hashlib.sha256(json.dumps([s["name"], layer, L], sort_keys=True).encode()).hexdigest()
            if drawn.get(path.name) != key or not path.is_file():
                plot_routing(s["name"], layer, L, path)
                drawn[path.name] = key
            files.append(path)
    keys_file.write_text(json.dumps(drawn, sort_keys=True))
    return files
