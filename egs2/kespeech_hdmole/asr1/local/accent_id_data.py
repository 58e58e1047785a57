#!/usr/bin/env python3
"""The accent-ID head's training set (stage 4, step 3): the accent training set plus some
utterances of the source domain (standard Mandarin, a domain of its own in the accent list).

Standard Mandarin is the accent without sound changes, so the head learns it as the absence of
every other accent's cues; with the 30 Mandarin speakers of the accent training set alone it took
other speakers' quirks for accents (dev recall of Mandarin 65%, the lowest of the nine).

    accent_id_data.py subset  --src DUMP/source_train --num 300 --out DUMP/source_train_aid
    accent_id_data.py combine --src DUMP/train DUMP/source_train_aid --out DUMP/train_accent_id \\
        [--scp ENC/train/encoder_out.scp ENC/source_train_aid/encoder_out.scp --out_scp F]

``subset`` keeps ``--num`` utterances (all of them if there are fewer) spread evenly over the
sorted ids, so over the speakers;
``combine`` joins directories (and the frozen encoder's stored outputs of each) into one, sorted
by utterance id. Every table the first directory holds must be in the others; utterance ids must
be sorted and must not repeat; everything is checked before anything is written. Files are written
atomically and left alone when their content is unchanged. Each output directory gets a done
marker holding its sources' (their feature settings) and a code record, as stage 2's have.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import code_record  # noqa: E402
import data_dir  # noqa: E402
from data_dir import DataDirError as DataError  # noqa: E402
from package_modules import package_module  # noqa: E402

kaldi_table = package_module("utils.kaldi_table")

# the per-utterance tables of a dump directory (spk2utt is derived)
TABLES = ("feats.scp", "wav.scp", "text", "utt2spk", "utt2accent", "speech_shape")


def read_table(path: Path) -> Dict[str, str]:
    return data_dir.read_table(path, allow_empty_value=True)


def write_dir(out: Path, tables: Dict[str, Dict[str, str]], srcs: List[Path]) -> None:
    """The tables (sorted), spk2utt, and the done marker: the sources' own (their feature
    settings, which the recipe's input checks read); the code record (local/code_record.py) is
    renewed only when a file changed."""
    out.mkdir(parents=True, exist_ok=True)
    files = {name: kaldi_table.format_table(rows) for name, rows in tables.items()}
    if "utt2spk" in tables:
        files["spk2utt"] = kaldi_table.format_table(kaldi_table.spk2utt(tables["utt2spk"]))
    sources = {}
    for src in srcs:
        done = src / ".done"
        sources[src.name] = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else None
    files[".done"] = json.dumps({"made_by": "accent_id_data.py", "sources": sources}, sort_keys=True) + "\n"
    changed = False
    for name, content in files.items():
        changed |= kaldi_table.write_file(out / name, content)
    if changed or not (out / code_record.SIDECAR).is_file():
        code_record.write(out)


def load_dir(d: Path) -> Dict[str, Dict[str, str]]:
    tables = {name: read_table(d / name) for name in TABLES if (d / name).is_file()}
    if not tables:
        raise DataError(f"{d}: no data directory here (none of {', '.join(TABLES)})")
    first_name, first = next(iter(tables.items()))
    for name, rows in tables.items():
        if rows.keys() != first.keys():
            raise DataError(f"{d}/{name} and {d}/{first_name} list different utterances")
    return tables


def subset(src: Path, num: int, out: Path) -> int:
    tables = load_dir(src)
    ids = sorted(next(iter(tables.values())))
    if num < 1:
        raise DataError(f"--num {num}: keep at least 1 utterance of {src}")
    num = min(num, len(ids))
    keep = {ids[(i * len(ids)) // num] for i in range(num)}
    write_dir(out, {name: {k: v for k, v in rows.items() if k in keep} for name, rows in tables.items()}, [src])
    return len(keep)


def combine(srcs: List[Path]) -> Dict[str, Dict[str, str]]:
    """The directories' tables joined (each utterance once); nothing is written."""
    parts = [load_dir(s) for s in srcs]
    names = list(parts[0])
    merged: Dict[str, Dict[str, str]] = {name: {} for name in names}
    for src, tables in zip(srcs, parts):
        missing = [n for n in names if n not in tables]
        if missing:
            raise DataError(f"{src} lacks {', '.join(missing)}, which {srcs[0]} has")
        for name in names:
            clash = merged[name].keys() & tables[name].keys()
            if clash:
                raise DataError(f"{src}/{name}: utterance id {min(clash)!r} is also in an earlier directory")
            merged[name].update(tables[name])
    return merged


def combine_scp(scps: List[Path], utts: set) -> Dict[str, str]:
    """The scp files' rows joined; they must cover exactly ``utts``; nothing is written."""
    rows: Dict[str, str] = {}
    for scp in scps:
        for key, value in read_table(scp).items():
            if key in rows:
                raise DataError(f"{scp}: utterance id {key!r} is also in an earlier file")
            rows[key] = value
    if rows.keys() != utts:
        extra = sorted(rows.keys() ^ utts)
        raise DataError(f"{' '.join(map(str, scps))}: their utterances are not those of the combined "
                        f"directory (e.g. {extra[0]!r})")
    return rows


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subset", help="N utterances spread evenly over a directory's sorted ids")
    s.add_argument("--src", type=Path, required=True, help="a data or dump directory")
    s.add_argument("--num", type=int, required=True, help="how many utterances to keep (at most)")
    s.add_argument("--out", type=Path, required=True, help="the new directory")
    c = sub.add_parser("combine", help="several directories (and their stored encoder outputs) into one")
    c.add_argument("--src", type=Path, nargs="+", required=True, help="data or dump directories")
    c.add_argument("--out", type=Path, required=True, help="the combined directory")
    c.add_argument("--scp", type=Path, nargs="*", default=[],
                   help="the stored encoder outputs (scp) of each --src, in the same order")
    c.add_argument("--out_scp", type=Path, help="the combined scp (with --scp)")
    return p


def main(argv=None) -> int:
    a = get_parser().parse_args(argv)
    try:
        if a.cmd == "subset":
            n = subset(a.src, a.num, a.out)
            print(f"{a.out}: {n} utterances of {a.src}")
        else:
            if bool(a.scp) != bool(a.out_scp) or (a.scp and len(a.scp) != len(a.src)):
                raise DataError("--scp needs one file per --src, and --out_scp")
            merged = combine(a.src)
            utts = set(next(iter(merged.values())))
            scp_rows = combine_scp(a.scp, utts) if a.scp else None  # checked before anything is written
            write_dir(a.out, merged, a.src)
            if scp_rows is not None:
                a.out_scp.parent.mkdir(parents=True, exist_ok=True)
                kaldi_table.write_table(a.out_scp, scp_rows)
            print(f"{a.out}: {len(utts)} utterances from {' '.join(map(str, a.src))}")
    except (DataError, OSError) as e:
        print(f"ERROR: accent_id_data.py {a.cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
