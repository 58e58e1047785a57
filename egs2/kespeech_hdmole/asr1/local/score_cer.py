#!/usr/bin/env python3
"""Character error rate of one decoded set (stage 6 of the recipe).

    local/score_cer.py --ref data/test_Beijing/text \\
        --hyp exp/hdmole/decode_test_Beijing/1best_recog/text \\
        --out_dir exp/hdmole/decode_test_Beijing/score_cer

Both files are Kaldi style, one ``uid text`` per line (a line holding only the uid is an empty
transcript).  Both go through the recipe's one text normaliser, the one data preparation uses
(local/transcript_text.py: tags such as <NOISE> with their content, punctuation of any script and
whitespace removed, full-width letters and digits as ASCII; a stray bracket is dropped, not an
error; with ``--t2s true`` traditional characters as simplified), so a model that writes
punctuation or full-width forms is not charged for them.  Every remaining character (a Chinese
character, a digit, a Latin letter) is one unit.  The alignment is jiwer's
(``jiwer.process_characters``, a Levenshtein alignment with unit costs).

Outputs in --out_dir:

  result.json  {"set", "ref", "hyp", "utterances", "ref_chars", "hyp_chars", "hits",
               "substitutions", "deletions", "insertions", "errors", "cer" (fraction),
               "sentence_errors", "ser" (fraction), "missing_hyp"}
  result.txt   a summary in the spirit of sclite's: percentages and counts of one set
  per_utt.txt  per utterance (in the order of --ref): id, counts and the aligned REF/HYP/Eval
               lines in sclite's .pra layout ('*' pads the side that has no character,
               Eval marks S, D and I under the column of the error)

Checks: an utterance of --ref with no line in --hyp counts as a deletion of its whole reference
(a warning gives the number); a uid of --hyp that --ref lacks, a repeated uid, and an empty
reference transcript are errors that name the file (and line).
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import jiwer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from package_modules import package_module  # noqa: E402
from transcript_text import T2SUnavailable, normalize_text  # noqa: E402

kaldi_table = package_module("utils.kaldi_table")


class ScoringError(ValueError):
    """Bad input files; the message names the file (and line)."""


def read_transcripts(path: Path, allow_empty: bool, t2s: bool = False) -> Dict[str, Tuple[str, int]]:
    """uid -> (normalised text, line number), in file order.  Blank lines are skipped."""
    table = kaldi_table.read_table(path, "transcript", allow_empty=True, error=ScoringError)
    out: Dict[str, Tuple[str, int]] = {}
    for uid, raw in table.items():
        text = normalize_text(raw, strict=False, t2s=t2s)
        if not text and not allow_empty:
            raise ScoringError(f"{table.where(uid)}: empty reference transcript for {uid!r}; "
                               f"an utterance with nothing to recognise cannot be scored by CER")
        out[uid] = (text, table.lines[uid])
    return out


def _width(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def align_columns(ref: str, hyp: str, chunks) -> Tuple[List[Tuple[str, str, str]], Dict[str, int]]:
    """jiwer alignment chunks -> columns (ref char or '', hyp char or '', op) and counts."""
    cols: List[Tuple[str, str, str]] = []
    counts = {"hits": 0, "substitutions": 0, "deletions": 0, "insertions": 0}
    for c in chunks:
        r = ref[c.ref_start_idx:c.ref_end_idx]
        h = hyp[c.hyp_start_idx:c.hyp_end_idx]
        if c.type == "equal":
            cols += [(a, b, "") for a, b in zip(r, h)]
            counts["hits"] += len(r)
        elif c.type == "substitute":
            cols += [(a, b, "S") for a, b in zip(r, h)]
            counts["substitutions"] += len(r)
        elif c.type == "delete":
            cols += [(a, "", "D") for a in r]
            counts["deletions"] += len(r)
        elif c.type == "insert":
            cols += [("", b, "I") for b in h]
            counts["insertions"] += len(h)
        else:  # pragma: no cover - jiwer has exactly these four
            raise RuntimeError(f"unknown jiwer alignment type {c.type!r}")
    return cols, counts


def render_alignment(cols: Sequence[Tuple[str, str, str]]) -> Tuple[str, str, str]:
    """REF/HYP/Eval strings with one column per aligned position, padded to display width."""
    ref_cells, hyp_cells, ev_cells = [], [], []
    for r, h, op in cols:
        w = max(_width(r) if r else 1, _width(h) if h else 1)
        rc = r if r else "*" * w
        hc = h if h else "*" * w
        ref_cells.append(rc + " " * (w - sum(map(_width, rc))))
        hyp_cells.append(hc + " " * (w - sum(map(_width, hc))))
        ev_cells.append(op + " " * (w - len(op)))
    return " ".join(ref_cells), " ".join(hyp_cells), " ".join(ev_cells).rstrip()


def score(ref_path: Path, hyp_path: Path, set_name: str, t2s: bool = False):
    ref = read_transcripts(ref_path, allow_empty=False, t2s=t2s)
    if not ref:
        raise ScoringError(f"{ref_path}: no utterances")
    hyp = read_transcripts(hyp_path, allow_empty=True, t2s=t2s)
    unknown = [u for u in hyp if u not in ref]
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ScoringError(f"{hyp_path}: {len(unknown)} utterance id(s) not in the reference "
                           f"{ref_path}: {shown}")
    uids = list(ref)
    missing = [u for u in uids if u not in hyp]
    refs = [ref[u][0] for u in uids]
    hyps = [hyp[u][0] if u in hyp else "" for u in uids]
    out = jiwer.process_characters(refs, hyps)

    per_utt = []
    tot = {"hits": 0, "substitutions": 0, "deletions": 0, "insertions": 0}
    sent_err = 0
    for i, u in enumerate(uids):
        cols, c = align_columns(refs[i], hyps[i], out.alignments[i])
        for k in tot:
            tot[k] += c[k]
        err = c["substitutions"] + c["deletions"] + c["insertions"]
        sent_err += err > 0
        per_utt.append((u, refs[i], hyps[i], cols, c, u in hyp))
    # our counts come from the alignment; they must agree with jiwer's own sums
    assert (tot["hits"], tot["substitutions"], tot["deletions"], tot["insertions"]) == (
        out.hits, out.substitutions, out.deletions, out.insertions)

    ref_chars = sum(map(len, refs))
    errors = tot["substitutions"] + tot["deletions"] + tot["insertions"]
    result = {
        "set": set_name,
        "ref": str(ref_path),
        "hyp": str(hyp_path),
        "utterances": len(uids),
        "ref_chars": ref_chars,
        "hyp_chars": sum(map(len, hyps)),
        "hits": tot["hits"],
        "substitutions": tot["substitutions"],
        "deletions": tot["deletions"],
        "insertions": tot["insertions"],
        "errors": errors,
        "cer": errors / ref_chars,
        "sentence_errors": sent_err,
        "ser": sent_err / len(uids),
        "missing_hyp": len(missing),
    }
    return result, per_utt, missing


def _pct(num: int, den: int) -> str:
    return f"{100.0 * num / den:.2f}"


def format_summary(r: dict) -> str:
    n, w = r["utterances"], r["ref_chars"]
    head = ["SPKR", "#Snt", "#Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]
    pct = ["Sum/Avg (%)", str(n), str(w), _pct(r["hits"], w), _pct(r["substitutions"], w),
           _pct(r["deletions"], w), _pct(r["insertions"], w), _pct(r["errors"], w),
           _pct(r["sentence_errors"], n)]
    cnt = ["Sum (count)", str(n), str(w), str(r["hits"]), str(r["substitutions"]),
           str(r["deletions"]), str(r["insertions"]), str(r["errors"]), str(r["sentence_errors"])]
    widths = [max(len(a), len(b), len(c)) for a, b, c in zip(head, pct, cnt)]

    def row(cells):
        return "| " + " | ".join(c.rjust(wd) for c, wd in zip(cells, widths)) + " |"

    lines = [
        f"CER of {r['set']} (#Wrd counts characters; tags, punctuation and whitespace removed before scoring)",
        f"REF: {r['ref']}",
        f"HYP: {r['hyp']}",
        "",
        row(head),
        "|" + "|".join("-" * (wd + 2) for wd in widths) + "|",
        row(pct),
        row(cnt),
        "",
        f"%CER {100.0 * r['cer']:.2f} [ {r['errors']} / {w}, {r['insertions']} ins, "
        f"{r['deletions']} del, {r['substitutions']} sub ]",
        f"%SER {100.0 * r['ser']:.2f} [ {r['sentence_errors']} / {n} ]",
    ]
    if r["missing_hyp"]:
        lines.append(f"WARNING: {r['missing_hyp']} utterance(s) had no hypothesis and count as "
                     f"deletions of their whole reference")
    return "\n".join(lines) + "\n"


def format_per_utt(per_utt) -> str:
    lines = [
        "# Per-utterance alignment written by local/score_cer.py (sclite .pra layout).",
        "# Scores: (#C #S #D #I) = hits, substitutions, deletions, insertions (characters).",
        "# '*' pads the side without a character (deletion: HYP, insertion: REF);",
        "# Eval marks S (substitution), D (deletion), I (insertion) under the error.",
        "",
    ]
    for uid, r, h, cols, c, has_hyp in per_utt:
        err = c["substitutions"] + c["deletions"] + c["insertions"]
        rl, hl, el = render_alignment(cols)
        lines.append(f"id: ({uid})")
        lines.append(f"Scores: (#C #S #D #I) {c['hits']} {c['substitutions']} {c['deletions']} "
                     f"{c['insertions']}")
        lines.append(f"CER: {100.0 * err / len(r):.2f}% [ {err} / {len(r)} ]")
        if not has_hyp:
            lines.append("Note: no hypothesis for this utterance; counted as deletions")
        lines.append(f"REF:  {rl}".rstrip())
        lines.append(f"HYP:  {hl}".rstrip())
        lines.append(f"Eval: {el}".rstrip())
        lines.append("")
    return "\n".join(lines)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, type=Path, help="reference text, e.g. data/test_X/text")
    p.add_argument("--hyp", required=True, type=Path,
                   help="hypothesis text, e.g. exp/SYS/decode_test_X/1best_recog/text")
    p.add_argument("--out_dir", required=True, type=Path, help="where result.json etc. go")
    p.add_argument("--name", default=None,
                   help="set name in the reports (default: the directory name of --ref)")
    p.add_argument("--t2s", choices=["true", "false"], default="false",
                   help="score traditional characters as simplified ones (OpenCC t2s), in the "
                   "references and the hypotheses (default: %(default)s)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Score; return the result dict (as written to result.json).  Raises ScoringError."""
    args = get_parser().parse_args(argv)
    name = args.name or args.ref.resolve().parent.name
    result, per_utt, missing = score(args.ref, args.hyp, name, t2s=args.t2s == "true")
    if missing:
        print(f"WARNING: {len(missing)} of {result['utterances']} utterance(s) of {args.ref} have no "
              f"hypothesis in {args.hyp} (first: {missing[0]}); counted as deletions of the whole "
              f"reference", file=sys.stderr)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
    (args.out_dir / "result.txt").write_text(format_summary(result), encoding="utf-8")
    (args.out_dir / "per_utt.txt").write_text(format_per_utt(per_utt), encoding="utf-8")
    print(f"{name}: CER {100.0 * result['cer']:.2f}% ({result['errors']}/{result['ref_chars']}) "
          f"-> {args.out_dir}", file=sys.stderr)
    return result


if __name__ == "__main__":
    try:
        main()
    except (ScoringError, T2SUnavailable) as e:
        sys.exit(f"score_cer.py: error: {e}")
