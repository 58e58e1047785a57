#!/usr/bin/env python3
"""Collect the scored decodings of every system into RESULTS.md files and plots (stage 6).

    local/make_results.py --exp_dir exp [--systems source full_ft lora hdmole] \\
        [--accents_file data/accents.txt] [--source_set source_test] [--baseline source]

Reads, for each system directory exp/<sys>/:

  decode_<set>/score_cer/result.json  written by local/score_cer.py, for every accent set
                                      test_<Accent> and for the source set (--source_set)
  decode_<set>/rtf                    "key value" lines: rtf, utterances, decoding_seconds,
                                      audio_seconds, beam_size (threads, ...)
  params.json                         {"trainable", "reference", "share" (%), "full_ft_trainable"}
  routing.json       (optional)       {"layers": {layer: {"accents": [...], "mean_weight":
                                      [[weight per expert] per accent], "mean_active": float}},
                                      "accent_acc": float in [0, 1]}   (from decoding)
  train_stats.json   (optional)       {"accent_acc": float in [0, 1], "mean_active": {layer: float}}
                                      (from training)

Writes:

  exp/<sys>/RESULTS.md                one system: environment, CER per accent, accent average
                                      (unweighted and char-weighted), source CER and its change
                                      from --baseline, trainable parameters, routing, RTF
  exp/RESULTS.md                      all systems side by side, best accent average in bold
  exp/plots/cer_per_accent.png        grouped bars, CER per accent per system
  exp/plots/routing_<sys>_<layer>.png heat map accents x experts of the mean routing weight

Conventions: CER in % of reference characters; "Δ source" is the difference in CER points
(system minus baseline).  A number whose inputs are missing is printed as "-": the accent
average needs every accent, the overall RTF needs the rtf file of every set.  "% of full FT"
is trainable / trainable of the system named --full_ft_system when its params.json exists,
else params.json's own "share".  Accent-ID accuracy and mean active experts come from
routing.json (decoding); when only train_stats.json has them they are marked "(train)".
Everything written is deterministic for the same inputs except the one date line per file
(set SOURCE_DATE_EPOCH to fix it too).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accent_effect  # noqa: E402
import accent_id_results  # noqa: E402
import cer_bootstrap  # noqa: E402
from results_plots import draw_routing_plots, plot_cer  # noqa: E402

DASH = "-"
GENERATOR = "local/make_results.py"


class ResultsError(ValueError):
    """Bad or inconsistent input files; the message names the file."""


def accent_confusions(d: Path, accents: Sequence[str], train_stats: Optional[dict]) -> dict:
    """{'dev': counts or None, 'test sets': counts or None} of the accent head (see accent_id_results)."""
    try:
        return {"dev": accent_id_results.dev_confusion(train_stats, accents, d / "train_stats.json"),
                "test sets": accent_id_results.test_confusion(d, accents)}
    except accent_id_results.AccentIDError as e:
        raise ResultsError(str(e)) from e


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------
def load_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_kv(path: Path) -> Optional[Dict[str, float]]:
    """A file of "key value" lines (the decoder's rtf file); values are numbers."""
    if not path.is_file():
        return None
    out: Dict[str, float] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ResultsError(f"{path}:{lineno}: expected 'key value', got {line!r}")
        try:
            out[parts[0]] = float(parts[1])
        except ValueError:
            raise ResultsError(f"{path}:{lineno}: value of {parts[0]!r} is not a number: "
                               f"{parts[1]!r}") from None
    return out


def read_accents(path: Path) -> List[str]:
    if not path.is_file():
        raise ResultsError(f"{path}: accents file not found")
    accents = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not accents:
        raise ResultsError(f"{path}: no accents listed")
    if len(set(accents)) != len(accents):
        raise ResultsError(f"{path}: an accent is listed twice")
    return accents


def _fraction(path: Path, value, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ResultsError(f"{path}: {what} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def load_result(path: Path) -> Optional[dict]:
    r = load_json(path)
    if r is None:
        return None
    need = ("utterances", "ref_chars", "substitutions", "deletions", "insertions")
    miss = [k for k in need if not isinstance(r.get(k), int)]
    if miss:
        raise ResultsError(f"{path}: missing or non-integer field(s) {', '.join(miss)}")
    if r["ref_chars"] <= 0:
        raise ResultsError(f"{path}: ref_chars must be positive")
    r["errors"] = r["substitutions"] + r["deletions"] + r["insertions"]
    r["cer_pct"] = 100.0 * r["errors"] / r["ref_chars"]
    return r


def load_params(path: Path) -> Optional[dict]:
    p = load_json(path)
    if p is None:
        return None
    if not isinstance(p.get("trainable"), int):
        raise ResultsError(f"{path}: 'trainable' must be an integer")
    return p


def load_routing(path: Path) -> Optional[dict]:
    r = load_json(path)
    if r is None:
        return None
    layers = r.get("layers")
    if not isinstance(layers, dict):
        raise ResultsError(f"{path}: 'layers' must be an object {{layer: {{...}}}}")
    for name, L in layers.items():
        acc, mw = L.get("accents"), L.get("mean_weight")
        if not isinstance(acc, list) or not isinstance(mw, list) or len(acc) != len(mw) or not mw:
            raise ResultsError(f"{path}: layer {name!r}: 'mean_weight' needs one row per accent "
                               f"of 'accents'")
        if len({len(row) for row in mw}) != 1 or not mw[0]:
            raise ResultsError(f"{path}: layer {name!r}: rows of 'mean_weight' differ in length")
        if L.get("mean_active", 0) is None:  # null (local/model_info.py: not measured) = absent
            del L["mean_active"]
        if "mean_active" in L and (not isinstance(L["mean_active"], (int, float))
                                   or isinstance(L["mean_active"], bool)):
            raise ResultsError(f"{path}: layer {name!r}: 'mean_active' must be a number or null")
    if r.get("accent_acc") is not None:
        r["accent_acc"] = _fraction(path, r["accent_acc"], "accent_acc")
    return r


def load_train_stats(path: Path) -> Optional[dict]:
    t = load_json(path)
    if t is None:
        return None
    if t.get("accent_acc") is not None:
        t["accent_acc"] = _fraction(path, t["accent_acc"], "accent_acc")
    ma = t.get("mean_active")
    if ma is not None and (not isinstance(ma, dict) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in ma.values())):
        raise ResultsError(f"{path}: 'mean_active' must be an object {{layer: number or null}}")
    if ma is not None:  # null (not measured) = absent
        t["mean_active"] = {k: v for k, v in ma.items() if v is not None}
    return t


def discover_systems(exp_dir: Path) -> List[str]:
    out = []
    for d in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
        if (d / "params.json").is_file() or any(d.glob("decode_*/score_cer/result.json")):
            out.append(d.name)
    return out


def discover_accents(exp_dir: Path, systems: Sequence[str]) -> List[str]:
    names = set()
    for s in systems:
        for d in (exp_dir / s).glob("decode_test_*"):
            if d.is_dir():
                names.add(d.name[len("decode_test_"):])
    return sorted(names)


# --------------------------------------------------------------------------
# Per-system numbers
# --------------------------------------------------------------------------
def mean(xs: Sequence[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def load_system(exp_dir: Path, name: str, accents: Sequence[str], source_set: str) -> dict:
    d = exp_dir / name
    sets = [f"test_{a}" for a in accents] + [source_set]
    res = {s: load_result(d / f"decode_{s}" / "score_cer" / "result.json") for s in sets}
    rtf = {s: read_kv(d / f"decode_{s}" / "rtf") for s in sets}
    sysd = {
        "name": name, "dir": d, "sets": sets, "result": res, "rtf": rtf,
        "params": load_params(d / "params.json"),
        "routing": load_routing(d / "routing.json"),
        "train_stats": load_train_stats(d / "train_stats.json"),
    }
    acc_res = [res[f"test_{a}"] for a in accents]
    complete = bool(acc_res) and all(r is not None for r in acc_res)
    sysd["accent_avg"] = mean([r["cer_pct"] for r in acc_res]) if complete else None
    sysd["accent_weighted"] = (100.0 * sum(r["errors"] for r in acc_res)
                               / sum(r["ref_chars"] for r in acc_res)) if complete else None
    sysd["source_cer"] = res[source_set]["cer_pct"] if res[source_set] else None

    # overall RTF: needs decoding and audio seconds of every set
    rows = [rtf[s] for s in sets]
    if all(r is not None and "decoding_seconds" in r and "audio_seconds" in r for r in rows):
        audio = sum(r["audio_seconds"] for r in rows)
        sysd["rtf_all"] = sum(r["decoding_seconds"] for r in rows) / audio if audio > 0 else None
    else:
        sysd["rtf_all"] = None

    # accent-ID accuracy: over the test sets' decodings first, else dev (routing.json, train_stats.json)
    rt, ts = sysd["routing"], sysd["train_stats"]
    sysd["accent_confusion"] = accent_confusions(d, accents, ts)
    sysd["accent_acc"], sysd["accent_acc_src"] = None, None
    if sysd["accent_confusion"]["test sets"] is not None:
        sysd["accent_acc"], sysd["accent_acc_src"] = accent_id_results.accuracy(sysd["accent_confusion"]["test sets"]), "test"
    elif rt is not None and rt.get("accent_acc") is not None:
        sysd["accent_acc"], sysd["accent_acc_src"] = rt["accent_acc"], "decode"
    elif ts is not None and ts.get("accent_acc") is not None:
        sysd["accent_acc"], sysd["accent_acc_src"] = ts["accent_acc"], "train"
    rt_active = ([L["mean_active"] for L in rt["layers"].values() if "mean_active" in L]
                 if rt is not None else [])
    ts_active = list(ts["mean_active"].values()) if ts is not None and ts.get("mean_active") else []
    sysd["mean_active"], sysd["mean_active_src"] = None, None
    if rt is not None and rt_active and len(rt_active) == len(rt["layers"]):
        sysd["mean_active"], sysd["mean_active_src"] = mean(rt_active), "decode"
    elif ts_active:
        sysd["mean_active"], sysd["mean_active_src"] = mean(ts_active), "train"
    return sysd


def attach_relative(systems: List[dict], baseline: Optional[dict], full_ft: Optional[dict],
                    full_ft_name: str) -> None:
    """Δ source vs the baseline and % of full fine-tuning."""
    base_src = baseline["source_cer"] if baseline is not None else None
    ft_params = full_ft["params"] if full_ft is not None else None
    for s in systems:
        s["delta_source"] = (s["source_cer"] - base_src
                             if s["source_cer"] is not None and base_src is not None else None)
        p = s["params"]
        s["pct_full_ft"], s["pct_basis"] = None, None
        if p is None:
            continue
        if ft_params is not None and ft_params["trainable"] > 0:
            s["pct_full_ft"] = 100.0 * p["trainable"] / ft_params["trainable"]
            s["pct_basis"] = (f"of the {ft_params['trainable']:,} trainable parameters of "
                              f"system `{full_ft_name}`")
        elif isinstance(p.get("share"), (int, float)):
            s["pct_full_ft"] = float(p["share"])
            ref = p.get("reference")
            s["pct_basis"] = ("params.json share: of the "
                              + (f"{ref:,} " if isinstance(ref, int) else "")
                              + "parameters full fine-tuning of the same parts would train")


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------
def f2(x: Optional[float]) -> str:
    return DASH if x is None else f"{x:.2f}"


def fsigned(x: Optional[float]) -> str:
    return DASH if x is None else f"{x:+.2f}"


def fint(x) -> str:
    return DASH if x is None else f"{int(x):,}"


def fnum(x: Optional[float]) -> str:
    """A count read from a file: integer if it is one, else as given."""
    if x is None:
        return DASH
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def fpct_frac(x: Optional[float]) -> str:
    return DASH if x is None else f"{100.0 * x:.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]) -> List[str]:
    sep = {"l": "---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def report_date() -> str:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        return datetime.datetime.fromtimestamp(int(sde), datetime.timezone.utc).strftime("%Y-%m-%d")
    return datetime.date.today().isoformat()


def header_line(date: str) -> str:
    return (f"<!-- Generated by {GENERATOR} on {date}. Do not edit by hand: "
            f"re-run stage 6 of run.sh (or {GENERATOR}) instead. -->")


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or DASH


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_lines() -> List[str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    threads = f"{os.cpu_count()}" + (f" ({usable} usable by this process)" if usable else "")
    return [
        "Of the machine that ran make_results.py (decoding threads are in the RTF section).",
        "",
        f"- python: {platform.python_version()}",
        f"- torch: {version_of('torch')}",
        f"- transformers: {version_of('transformers')}",
        f"- espnet: {version_of('espnet')}",
        f"- espnet_hdmole: {version_of('espnet_hdmole')}",
        f"- jiwer: {version_of('jiwer')}",
        f"- CPU: {cpu_model()}",
        f"- CPU threads: {threads}",
    ]


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def routing_plot_names(systems: Sequence[dict]) -> Dict[Tuple[str, str], str]:
    names: Dict[Tuple[str, str], str] = {}
    used = set()
    for s in systems:
        if s["routing"] is None:
            continue
        for layer in s["routing"]["layers"]:
            base = f"routing_{safe_name(s['name'])}_{safe_name(layer)}"
            name, k = base, 1
            while name in used:
                k += 1
                name = f"{base}_{k}"
            used.add(name)
            names[(s["name"], layer)] = name + ".png"
    return names


def system_markdown(s: dict, accents: Sequence[str], source_set: str, baseline_name: str,
                    baseline: Optional[dict], plot_names: Dict[Tuple[str, str], str],
                    date: str) -> str:
    L = [header_line(date), "", f"# RESULTS: {s['name']}", "", "## Environment", ""]
    L += environment_lines()

    # ---- CER
    L += ["", "## Character error rate", "",
          "CER = (Sub + Del + Ins) / reference characters, in %; whitespace removed before "
          "scoring (local/score_cer.py).", ""]
    rows = []
    acc_res = [s["result"][f"test_{a}"] for a in accents]
    for a, r in zip(accents, acc_res):
        if r is None:
            rows.append([f"test_{a}"] + [DASH] * 6)
        else:
            rows.append([f"test_{a}", fint(r["utterances"]), fint(r["ref_chars"]), f2(r["cer_pct"]),
                         fint(r["substitutions"]), fint(r["deletions"]), fint(r["insertions"])])
    complete = s["accent_avg"] is not None
    tot = (lambda k: sum(r[k] for r in acc_res)) if complete else (lambda k: None)
    rows.append([f"accent average (unweighted mean of {len(accents)})", fint(tot("utterances")),
                 fint(tot("ref_chars")), f2(s["accent_avg"]), DASH, DASH, DASH])
    rows.append(["accent total (char-weighted)", fint(tot("utterances")), fint(tot("ref_chars")),
                 f2(s["accent_weighted"]), fint(tot("substitutions")), fint(tot("deletions")),
                 fint(tot("insertions"))])
    r = s["result"][source_set]
    rows.append([f"{source_set} (source domain)"] + (
        [DASH] * 6 if r is None else
        [fint(r["utterances"]), fint(r["ref_chars"]), f2(r["cer_pct"]), fint(r["substitutions"]),
         fint(r["deletions"]), fint(r["insertions"])]))
    L += table(["set", "utterances", "characters", "CER %", "Sub", "Del", "Ins"], rows,
               "lrrrrrr")
    missing = [f"test_{a}" for a, r in zip(accents, acc_res) if r is None]
    if missing:
        L += ["", f"No result for {', '.join(missing)}: the accent averages are not given."]
    missing_hyp = [(n, r["missing_hyp"]) for n, r in s["result"].items()
                   if r is not None and r.get("missing_hyp")]
    if missing_hyp:
        L += ["", "Utterances without a hypothesis (scored as deletions): "
              + ", ".join(f"{n}: {k}" for n, k in missing_hyp) + "."]

    # ---- source
    L += ["", "## Source domain", ""]
    base_src = baseline["source_cer"] if baseline is not None else None
    if baseline is None:
        why = f"no baseline system `{baseline_name}`"
    elif base_src is None:
        why = f"baseline `{baseline_name}` has no {source_set} result"
    else:
        why = None
    L.append(f"- {source_set} CER: {f2(s['source_cer'])} %")
    if why:
        L.append(f"- Δ vs baseline `{baseline_name}`: {DASH} ({why})")
    else:
        L.append(f"- Δ vs baseline `{baseline_name}` ({f2(base_src)} %): "
                 f"{fsigned(s['delta_source'])} CER points")

    # ---- parameters
    L += ["", "## Trainable parameters", ""]
    p = s["params"]
    if p is None:
        L.append(f"- {DASH} (no params.json)")
    else:
        L.append(f"- trainable: {fint(p['trainable'])}")
        pct = f2(s["pct_full_ft"])
        L.append(f"- % of full fine-tuning: {pct}" + (f" ({s['pct_basis']})" if s["pct_basis"] else ""))
        share = p.get("share")
        L.append(f"- params.json: reference {fint(p.get('reference'))}, share "
                 f"{f2(share) if isinstance(share, (int, float)) else DASH} %, full_ft_trainable "
                 f"{fint(p.get('full_ft_trainable'))}")

    # ---- routing
    rt, ts = s["routing"], s["train_stats"]
    if rt is not None or ts is not None:
        L += ["", "## Routing", ""]
        L.append(f"- accent-ID accuracy on dev (routing.json): "
                 f"{fpct_frac(rt.get('accent_acc') if rt else None)} %")
        layers = list(rt["layers"]) if rt is not None else []
        ts_ma = (ts.get("mean_active") or {}) if ts is not None else {}
        layers += [k for k in ts_ma if k not in layers]
        if layers:
            L.append("")
            rows = []
            for layer in layers:
                Lr = rt["layers"].get(layer) if rt is not None else None
                plot = plot_names.get((s["name"], layer))
                rows.append([f"`{layer}`",
                             f2(Lr.get("mean_active")) if Lr is not None else DASH,
                             f2(ts_ma.get(layer)),
                             f"[png](../plots/{plot})" if plot else DASH])
            ma_dec = (mean([rt["layers"][k]["mean_active"] for k in rt["layers"]])
                      if rt is not None and rt["layers"]
                      and all("mean_active" in v for v in rt["layers"].values()) else None)
            ma_tr = mean(list(ts_ma.values())) if ts_ma else None
            rows.append(["mean over layers", f2(ma_dec), f2(ma_tr), ""])
            L += table(["layer", "mean active experts (decoding)", "mean active experts (training)",
                        "heat map"], rows, "lrrl")

    L += accent_id_results.markdown(s["accent_confusion"], accents,
                                    f"../plots/accent_id_{safe_name(s['name'])}.png" if s.get("accent_plot") else None)

    # ---- RTF
    L += ["", "## Decoding speed", ""]
    rows = []
    for st in s["sets"]:
        k = s["rtf"][st]
        if k is None:
            rows.append([st] + [DASH] * 6)
        else:
            rows.append([st, fnum(k.get("utterances")), f2(k.get("decoding_seconds")),
                         f2(k.get("audio_seconds")),
                         DASH if k.get("rtf") is None else f"{k['rtf']:.4f}",
                         fnum(k.get("beam_size")), fnum(k.get("threads"))])
    rows.append(["all sets (total decoding s / total audio s)", "", "", "",
                 DASH if s["rtf_all"] is None else f"{s['rtf_all']:.4f}", "", ""])
    L += table(["set", "utterances", "decoding s", "audio s", "RTF", "beam", "threads"], rows,
               "lrrrrrr")
    return "\n".join(L) + "\n"


def summary_markdown(systems: Sequence[dict], accents: Sequence[str], source_set: str,
                     baseline_name: str, full_ft_name: str, date: str) -> str:
    L = [header_line(date), "", "# RESULTS: all systems", "", "## Environment", ""]
    L += environment_lines()
    L += ["", "## Systems", "",
          f"CER in % per accent set test_<accent>; accent avg = unweighted mean over the "
          f"{len(accents)} accents (best in bold); source = {source_set}; Δ source = CER points "
          f"against baseline `{baseline_name}`; % full FT = trainable / trainable of "
          f"`{full_ft_name}` (else params.json share); accent-ID acc in % over the test sets ((dev): "
          f"on the dev set, when no decoding predicted accents); mean active = experts per "
          f"token averaged over layers; RTF = total decoding s / total audio s over all sets. "
          f"(train) = from train_stats.json because routing.json lacks it. "
          f"{DASH} = not available.", ""]
    avgs = [round(s["accent_avg"], 2) for s in systems if s["accent_avg"] is not None]
    best = min(avgs) if avgs else None
    rows = []
    for s in systems:
        avg = f2(s["accent_avg"])
        if best is not None and s["accent_avg"] is not None and round(s["accent_avg"], 2) == best:
            avg = f"**{avg}**"
        acc = fpct_frac(s["accent_acc"]) + ("" if s["accent_acc_src"] in ("test", None) else " (dev)")
        act = f2(s["mean_active"]) + (" (train)" if s["mean_active_src"] == "train" else "")
        rows.append([f"[{s['name']}]({s['name']}/RESULTS.md)"]
                    + [f2(s["result"][f"test_{a}"]["cer_pct"]) if s["result"][f"test_{a}"] else DASH
                       for a in accents]
                    + [avg, f2(s["source_cer"]), fsigned(s["delta_source"]),
                       fint(s["params"]["trainable"]) if s["params"] else DASH,
                       f2(s["pct_full_ft"]), acc, act,
                       DASH if s["rtf_all"] is None else f"{s['rtf_all']:.4f}"])
    header = (["system"] + list(accents)
              + ["accent avg", "source", f"Δ source vs {baseline_name}", "trainable params",
                 "% of full FT", "accent-ID acc", "mean active experts", "RTF"])
    L += table(header, rows, "l" + "r" * (len(header) - 1))
    L += ["", "## Plots", "", "- [CER per accent](plots/cer_per_accent.png)"]
    for s in systems:
        if s["routing"] is not None:
            L.append(f"- routing heat maps of `{s['name']}`: see [{s['name']}/RESULTS.md]"
                     f"({s['name']}/RESULTS.md)")
        if s.get("accent_plot"):
            L.append(f"- accent-ID confusion of `{s['name']}` (dev, test sets): "
                     f"[plots/accent_id_{safe_name(s['name'])}.png](plots/accent_id_{safe_name(s['name'])}.png)")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------
# --------------------------------------------------------------------------
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", type=Path, default=Path("exp"))
    p.add_argument("--systems", nargs="+", default=None,
                   help="system directories under --exp_dir, in this order (default: every "
                        "directory with params.json or a scored decoding, sorted)")
    p.add_argument("--accents_file", type=Path, default=None,
                   help="accent names, one a line (default: data/accents.txt if it exists, else "
                        "the decode_test_* directories found, sorted)")
    p.add_argument("--source_set", default="source_test")
    p.add_argument("--baseline", default="source", help="system the source-domain Δ is taken against")
    p.add_argument("--full_ft_system", default="full_ft",
                   help="system whose trainable count is 100%% for '%% of full FT'")
    p.add_argument("--no_plots", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Write the reports; return {"systems": [...], "files": [...]}.  Raises ResultsError."""
    args = get_parser().parse_args(argv)
    exp = args.exp_dir
    if not exp.is_dir():
        raise ResultsError(f"{exp}: experiment directory not found")
    if args.systems:
        names = list(dict.fromkeys(args.systems))
        for n in names:
            if not (exp / n).is_dir():
                raise ResultsError(f"{exp / n}: system directory not found")
    else:
        names = discover_systems(exp)
        if not names:
            raise ResultsError(f"{exp}: no system directories (with params.json or "
                               f"decode_*/score_cer/result.json)")
    if args.accents_file is not None:
        accents = read_accents(args.accents_file)
    elif Path("data/accents.txt").is_file():
        accents = read_accents(Path("data/accents.txt"))
    else:
        accents = discover_accents(exp, names)
        if not accents:
            raise ResultsError(f"no --accents_file, no data/accents.txt and no decode_test_* "
                               f"directories under {exp}")

    systems = [load_system(exp, n, accents, args.source_set) for n in names]
    by = {s["name"]: s for s in systems}

    def other(name: str) -> Optional[dict]:
        if name in by:
            return by[name]
        return load_system(exp, name, accents, args.source_set) if (exp / name).is_dir() else None

    baseline = other(args.baseline)
    if baseline is None:
        print(f"WARNING: baseline system {exp / args.baseline} not found; Δ source is '-'",
              file=sys.stderr)
    full_ft = other(args.full_ft_system)
    if full_ft is not None and full_ft["params"] is None:
        full_ft = None
    attach_relative(systems, baseline, full_ft, args.full_ft_system)

    date = report_date()
    files: List[Path] = []
    plot_names = routing_plot_names(systems)
    if not args.no_plots:
        (exp / "plots").mkdir(exist_ok=True)
        for s in systems:
            path = exp / "plots" / f"accent_id_{safe_name(s['name'])}.png"
            s["accent_plot"] = accent_id_results.plot(s["accent_confusion"], accents, path)
            if s["accent_plot"]:
                files.append(path)
    for s in systems:
        out = s["dir"] / "RESULTS.md"
        out.write_text(system_markdown(s, accents, args.source_set, args.baseline, baseline,
                                       plot_names if not args.no_plots else {}, date),
                       encoding="utf-8")
        files.append(out)
    out = exp / "RESULTS.md"
    text = summary_markdown(systems, accents, args.source_set, args.baseline, args.full_ft_system, date)
    if baseline is not None:
        try:
            text += "\n".join(accent_effect.markdown(exp / args.baseline, args.baseline, accents, args.source_set)) + "\n"
        except cer_bootstrap.ScoreFileError as e:
            raise ResultsError(str(e)) from e
    out.write_text(text, encoding="utf-8")
    files.append(out)

    if not args.no_plots:
        plots = exp / "plots"
        plots.mkdir(exist_ok=True)
        plot_cer(systems, accents, plots / "cer_per_accent.png")
        files.append(plots / "cer_per_accent.png")
        files += draw_routing_plots(systems, plot_names, plots)
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return {"systems": systems, "files": [str(f) for f in files], "accents": accents}


if __name__ == "__main__":
    try:
        main()
    except ResultsError as e:
        sys.exit(f"make_results.py: error: {e}")
