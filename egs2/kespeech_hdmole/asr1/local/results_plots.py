"""The plots of local/make_results.py: CER per accent, and per system one figure of routing heat
maps (one per adapted layer).

PNG files are byte-identical across runs for the same data (no version string in them).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


PNG_META = {"Software": None}  # no version string in the file: identical bytes across runs


def plot_cer(systems: Sequence[dict], accents: Sequence[str], path: Path,
             intervals: Optional[Dict[str, dict]] = None) -> None:
    """Bars of CER per accent and system; with ``intervals`` (system -> {"sets": {set: (point, lo,
    hi)}} of system_intervals.compute) each bar gets its 95% interval as an error bar."""
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
        sets = ((intervals or {}).get(s["name"]) or {}).get("sets") or {}
        err = None
        if all(f"test_{a}" in sets for a in accents):
            err = np.array([[v - sets[f"test_{a}"][1], sets[f"test_{a}"][2] - v] for a, v in zip(accents, vals)]).T
            err = np.clip(err, 0.0, None)  # a draw-free set's bounds may differ from its CER in the last bits
        ax.bar(xs, vals, width, label=s["name"], yerr=err, error_kw={"elinewidth": 0.6, "capsize": 0},
               color=plt.get_cmap("tab20" if n > 10 else "tab10")(i % (20 if n > 10 else 10)))
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
    ax.set_title("CER per accent" + (" (bars: 95% bootstrap intervals)" if intervals else ""))
    if systems:  # beside the axes: inside, it covered bars
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_META)
    plt.close(fig)


def _routing_panel(ax, layer: str, L: dict, left: bool, bottom: bool, numbers: bool):
    import numpy as np

    w = np.asarray(L["mean_weight"], dtype=float)
    n_acc, n_exp = w.shape
    im = ax.imshow(w, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-9))
    ax.set_xticks(range(n_exp))
    epd, nd = L.get("experts_per_domain"), L.get("num_domains")
    if not bottom:
        ax.set_xticklabels([])
    elif (isinstance(epd, int) and isinstance(nd, int) and epd > 0 and nd == n_acc
            and nd * epd == n_exp):  # expert i belongs to domain i // experts_per_domain
        ax.set_xticklabels([f"E{i} {L['accents'][i // epd]}" for i in range(n_exp)],
                           rotation=60, ha="right", fontsize=6)
        ax.set_xlabel("expert (its domain)", fontsize=7)
    else:
        ax.set_xticklabels([f"E{i}" for i in range(n_exp)], fontsize=6)
        ax.set_xlabel("expert", fontsize=7)
    ax.set_yticks(range(n_acc))
    ax.set_yticklabels(L["accents"] if left else [], fontsize=6)
    title = re.sub(r"^llm\.(model\.)?layers\.(\d+)\.(self_attn|mlp)\.", r"L\2 ", layer)
    if L.get("mean_active") is not None:
        title += f" ({L['mean_active']:.2f} active)"
    ax.set_title(title, fontsize=7)
    if numbers and n_acc * n_exp <= 144:
        thr = 0.5 * float(w.max())
        for i in range(n_acc):
            for j in range(n_exp):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if w[i, j] > thr else "white")
    return im


def plot_routing(system: str, layers: Dict[str, dict], path: Path) -> None:
    """One figure per system: a heat map (accents x experts, mean routing weight) per adapted layer,
    in the model's order, 7 to a row (the 7 linears of an LLM layer share a row). The weights are
    written in the cells when there are at most 4 maps (routing.json has them all)."""
    import math

    plt = _pyplot()
    names = list(layers)
    ncols = min(7, len(names))
    nrows = math.ceil(len(names) / ncols)
    n_acc, n_exp = (len(x) for x in (layers[names[0]]["mean_weight"], layers[names[0]]["mean_weight"][0]))
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(1.5 + ncols * max(2.2, 0.3 * n_exp), 1.0 + nrows * max(1.8, 0.25 * n_acc)),
                             constrained_layout=True)
    im = None
    for k, layer in enumerate(names):
        r, c = divmod(k, ncols)
        bottom = k + ncols >= len(names)
        im = _routing_panel(axes[r][c], layer, layers[layer], left=c == 0, bottom=bottom, numbers=len(names) <= 4)
    for k in range(len(names), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    fig.suptitle(f"{system}: mean routing weight per accent (rows) and expert (columns)", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.6, label="mean routing weight")
    fig.savefig(path, dpi=100, metadata=PNG_META)
    plt.close(fig)


def draw_routing_plots(systems: Sequence[dict], plot_names: Dict[Tuple[str, str], str], plots: Path) -> List[Path]:
    """One figure of heat maps per system (all its adapted layers); returns their paths.

    A figure is drawn again only when its data changed: plots/.routing_keys.json remembers what
    each file shows."""
    files: List[Path] = []
    keys_file = plots / ".routing_keys.json"
    try:
        drawn = json.loads(keys_file.read_text())
    except (OSError, ValueError):
        drawn = {}
    for s in systems:
        if s["routing"] is None or not s["routing"]["layers"]:
            continue
        layers = s["routing"]["layers"]
        path = plots / plot_names[(s["name"], next(iter(layers)))]
        key = hashlib.sha256(json.dumps([s["name"], layers], sort_keys=True).encode()).hexdigest()
        if drawn.get(path.name) != key or not path.is_file():
            plot_routing(s["name"], layers, path)
            drawn[path.name] = key
        files.append(path)
    keys_file.write_text(json.dumps(drawn, sort_keys=True))
    return files
