"""Reading and validating Kaldi-style data directories (wav.scp, text, utt2spk, spk2utt, utt2accent).

    python local/data_dir.py data/train [--accents data/accents.txt] [--check_audio true]

exits non-zero with a message naming the file, the line and what was expected.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

REQUIRED = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2accent")


class DataDirError(ValueError):
    pass


def read_table(path, allow_empty_value: bool = False) -> Dict[str, str]:
    """'uid value' lines; checks: file exists, ids unique and sorted (byte order), values present."""
    p = Path(path)
    if not p.is_file():
        raise DataDirError(f"{p}: file does not exist")
    out: Dict[str, str] = {}
    prev: Optional[str] = None
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                raise DataDirError(f"{p}:{n}: empty line")
            uid, _, value = line.partition(" ")
            value = value.strip()
            if not value and not allow_empty_value:
                raise DataDirError(f"{p}:{n}: '{uid}' has no value (expected 'id value')")
            if prev is not None and uid.encode() <= prev.encode():
                why = "appears twice" if uid == prev else f"comes after '{prev}': sort the file (LC_ALL=C sort)"
                raise DataDirError(f"{p}:{n}: id '{uid}' {why}")
            prev = uid
            out[uid] = value
    if not out:
        raise DataDirError(f"{p}: file is empty")
    return out


def validate(d, accents: Optional[List[str]] = None, check_audio: bool = True) -> int:
    """Validate a data dir; returns the number of utterances."""
    d = Path(d)
    if not d.is_dir():
        raise DataDirError(f"{d}: data directory does not exist")
    tables = {}
    for name in REQUIRED:
        tables[name] = read_table(d / name, allow_empty_value=(name == "text"))
    ids = list(tables["wav.scp"])
    for name in ("text", "utt2spk", "utt2accent"):
        other = list(tables[name])
        if other != ids:
            a, b = set(ids), set(other)
            raise DataDirError(
                f"{d}: utterance ids of wav.scp and {name} disagree: only in wav.scp {sorted(a - b)[:3]}, "
                f"only in {name} {sorted(b - a)[:3]}"
            )
    for n, (uid, text) in enumerate(tables["text"].items(), 1):
        if not text:
            raise DataDirError(f"{d / 'text'}:{n}: utterance '{uid}' has an empty transcript")
    spk = {}
    for uid, s in tables["utt2spk"].items():
        spk.setdefault(s, []).append(uid)
    s2u = {s: sorted(v.split()) for s, v in tables["spk2utt"].items()}
    if s2u != {s: sorted(v) for s, v in spk.items()}:
        raise DataDirError(f"{d}: spk2utt does not match utt2spk")
    if accents is not None:
        for n, (uid, a) in enumerate(tables["utt2accent"].items(), 1):
            if a not in accents:
                raise DataDirError(f"{d / 'utt2accent'}:{n}: '{uid}' has unknown accent label '{a}'; known: {accents}")
    if check_audio:
        import soundfile

        for n, (uid, path) in enumerate(tables["wav.scp"].items(), 1):
            if path.endswith("|"):
                raise DataDirError(f"{d / 'wav.scp'}:{n}: pipes are not supported, give a file path")
            try:
                info = soundfile.info(path)
            except Exception as e:  # noqa: BLE001 (soundfile raises several types)
                raise DataDirError(f"{d / 'wav.scp'}:{n}: cannot read audio of '{uid}' at '{path}': {e}") from None
            if info.frames == 0:
                raise DataDirError(f"{d / 'wav.scp'}:{n}: audio of '{uid}' at '{path}' is empty")
    return len(ids)


def read_accents(path) -> List[str]:
    p = Path(path)
    if not p.is_file():
        raise DataDirError(f"{p}: accent list does not exist")
    return [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dirs", nargs="+")
    ap.add_argument("--accents", default=None, help="file with the accent labels, one per line")
    ap.add_argument("--check_audio", default="true", choices=["true", "false"])
    a = ap.parse_args(argv)
    accents = read_accents(a.accents) if a.accents else None
    try:
        for d in a.data_dirs:
            n = validate(d, accents, a.check_audio == "true")
            print(f"{d}: {n} utterances OK", file=sys.stderr)
    except DataDirError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
