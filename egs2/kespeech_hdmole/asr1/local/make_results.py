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
  exp/RESULTS.md                      all systems side by side, best accent average in bold, the
                                      accent effect on --baseline, and the commit(s) that made the
                                      outputs (local/code_record.py)
  exp/plots/cer_per_accent.png        grouped bars, CER per accent per system
  exp/plots/routing_<sys>.png         per adapted layer, a heat map accents x experts of the mean
                                      routing weight (one figure per system)

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
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accent_effect  # noqa: E402
import accent_id_results  # noqa: E402
import cer_bootstrap  # noqa: E402
import claims  # noqa: E402
import seed_spread  # noqa: E402
import system_intervals  # noqa: E402
import code_record  # noqa: E402
from results_markdown import (  # noqa: E402
    mean, report_date, routing_plot_names, safe_name, summary_markdown, system_markdown)
from results_files import (  # noqa: E402
    ResultsError, discover_accents, discover_systems, load_params, load_result, load_routing,
    load_train_stats, read_accents, read_kv)
from results_plots import draw_routing_plots, plot_cer  # noqa: E402


def accent_confusions(d: Path, accents: Sequence[str], train_stats: Optional[dict]) -> dict:
    """{'dev': counts or None, 'test sets': counts or None} of the accent head (see accent_id_results)."""
    try:
        return {"dev": accent_id_results.dev_confusion(train_stats, accents, d / "train_stats.json"),
                "test sets": accent_id_results.test_confusion(d, accents)}
    except accent_id_results.AccentIDError as e:
        raise ResultsError(str(e)) from e


# --------------------------------------------------------------------------
# Per-system numbers
# --------------------------------------------------------------------------
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
    p.add_argument("--main_systems", nargs="*", default=["hdmole", "hdmole_proj"],
                   help="systems whose paired differences from every other system get intervals "
                        "('## Paired differences'; the claims' systems always do); those not among the "
                        "systems are left out")
    p.add_argument("--no_plots", action="store_true")
    p.add_argument("--code_dirs", nargs="*", type=Path, default=[],
                   help="more stage outputs (data, features, LLM, source model) whose code the '## Code' "
                        "section reports, beside every system's directory")
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
    # runs of other training seeds: in the '## Seeds' section and the claims, not as table rows
    seed_of = seed_spread.seed_runs(names)
    seeds = sorted(set(seed_of.values()))
    table = [s for s in systems if s["name"] not in seed_of]

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
    plot_names = routing_plot_names(table)
    if not args.no_plots:
        (exp / "plots").mkdir(exist_ok=True)
        for s in table:
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
    text = summary_markdown(table, accents, args.source_set, args.baseline, args.full_ft_system, date)
    known = {s["name"]: s for s in ([baseline] if baseline else []) + systems}
    system_dirs = {name: s["dir"] for name, s in known.items()}
    try:
        intervals = system_intervals.compute(system_dirs, accents, args.source_set, baseline["name"] if baseline else None,
                                             list(dict.fromkeys(args.main_systems + claims.main_systems(seeds))))
    except cer_bootstrap.ScoreFileError as e:
        raise ResultsError(str(e)) from e
    except system_intervals.IntervalError as e:  # the tables are still written, without intervals
        print(f"WARNING: no confidence intervals, paired differences or claims: {e}", file=sys.stderr)
        intervals = system_intervals.empty(system_dirs)
    shown = system_intervals.restrict(intervals, [n for n in known if n not in seed_of],
                                      args.main_systems + claims.main_systems())
    text += "\n" + "\n".join(system_intervals.markdown(shown, args.source_set, args.baseline))
    text += "\n".join(claims.markdown(claims.verdicts(intervals, known, args.full_ft_system, seeds))) + "\n"
    text += "\n".join(seed_spread.markdown(systems))
    if baseline is not None:
        try:
            text += "\n".join(accent_effect.markdown(exp / args.baseline, args.baseline, accents, args.source_set)) + "\n"
        except cer_bootstrap.ScoreFileError as e:
            raise ResultsError(str(e)) from e
    dirs = list(args.code_dirs) + [s["dir"] for s in systems] + ([baseline["dir"]] if baseline else [])
    text += "\n" + "\n".join(code_record.markdown(code_record.collect(dict.fromkeys(dirs))))
    out.write_text(text, encoding="utf-8")
    files.append(out)

    if not args.no_plots:
        plots = exp / "plots"
        plots.mkdir(exist_ok=True)
        plot_cer(table, accents, plots / "cer_per_accent.png", intervals["systems"])
        files.append(plots / "cer_per_accent.png")
        files += draw_routing_plots(table, plot_names, plots)
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return {"systems": systems, "files": [str(f) for f in files], "accents": accents, "intervals": intervals}


if __name__ == "__main__":
    try:
        main()
    except ResultsError as e:
        sys.exit(f"make_results.py: error: {e}")
