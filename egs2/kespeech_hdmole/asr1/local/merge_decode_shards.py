#!/usr/bin/env python3
"""Stage 6 with --inference_nj N: merge the decoding jobs' outputs into one decoding dir.

    python local/merge_decode_shards.py --keys exp/decode_inputs/feats.scp --out_dir exp/lora/decode_union \\
        exp/lora/decode_union/split3/out.1 exp/lora/decode_union/split3/out.2 exp/lora/decode_union/split3/out.3

Each job decoded a contiguous run of whole batches of --keys (llm_asr_inference --key_file), so
the merged 1best_recog files, written in the order of --keys, are those one job would write. The
rtf file adds up the utterances and seconds of the jobs (its rtf is their total decoding time
over their total audio) and says how many jobs there were. An utterance that no job or two jobs
decoded is an error.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from package_modules import package_module  # noqa: E402

kaldi_table = package_module("utils.kaldi_table")
SUMMED = ("utterances", "decoding_seconds", "audio_seconds")


class MergeError(ValueError):
    pass


def read_lines(path: Path) -> Dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key = line.split(" ", 1)[0]
        if key in out:
            raise MergeError(f"{path}: utterance {key} twice")
        out[key] = line
    return out


def read_rtf(path: Path) -> Dict[str, str]:
    if not path.is_file():
        raise MergeError(f"{path} is missing: did that decoding job finish?")
    return dict(line.split(None, 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def merge(keys: List[str], shards: List[Path], out_dir: Path) -> None:
    names = sorted({f.name for s in shards for f in (s / "1best_recog").glob("*") if f.is_file()})
    if "text" not in names:
        raise MergeError(f"no 1best_recog/text in {', '.join(map(str, shards))}")
    tables = {name: {} for name in names}
    owner: Dict[str, Path] = {}
    for s in shards:
        for name in names:
            f = s / "1best_recog" / name
            if not f.is_file():
                continue
            rows = read_lines(f)
            if name == "text":
                for k in rows:
                    if k in owner:
                        raise MergeError(f"utterance {k} was decoded by two jobs: {owner[k]} and {s}")
                    owner[k] = s
            tables[name].update(rows)
    missing = [k for k in keys if k not in owner]
    if missing:
        raise MergeError(f"{len(missing)} of {len(keys)} utterances were decoded by no job (e.g. {missing[:3]})")
    extra = sorted(set(owner) - set(keys))
    if extra:
        raise MergeError(f"the jobs decoded {len(extra)} utterances that are not in the key list (e.g. {extra[:3]})")
    rec = out_dir / "1best_recog"
    rec.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        kaldi_table.write_file(rec / name, "".join(rows[k] + "\n" for k in keys if k in rows))  # lines as they were
    rtfs = [read_rtf(s / "rtf") for s in shards]
    merged = dict(rtfs[0])
    for key in SUMMED:
        merged[key] = f"{sum(float(r[key]) for r in rtfs):.3f}"
    merged["utterances"] = str(sum(int(r["utterances"]) for r in rtfs))
    merged["rtf"] = f"{float(merged['decoding_seconds']) / max(float(merged['audio_seconds']), 1e-9):.5f}"
    merged["jobs"] = str(len(shards))
    (out_dir / "rtf").write_text("".join(f"{k} {v}\n" for k, v in merged.items()), encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", required=True, help="the decoded scp (its first column, in its order)")
    p.add_argument("--out_dir", required=True, help="where 1best_recog/ and rtf go")
    p.add_argument("shards", nargs="+", help="the jobs' output dirs")
    a = p.parse_args(argv)
    try:
        keys = [line.split(" ", 1)[0] for line in Path(a.keys).read_text(encoding="utf-8").splitlines() if line.strip()]
        merge(keys, [Path(s) for s in a.shards], Path(a.out_dir))
    except (MergeError, OSError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"merged {len(a.shards)} decoding jobs ({len(keys)} utterances) -> {a.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
