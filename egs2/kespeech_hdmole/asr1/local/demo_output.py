"""The demo corpus's output: Kaldi-style data directories written atomically, and the settings
record that keeps a directory made with other settings from being overwritten."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence

import code_record
from demo_common import CorpusError
from package_modules import package_module

kaldi_table = package_module("utils.kaldi_table")
write_text = kaldi_table.write_file  # atomic; a file that holds the content already is left alone

META_NAME = ".demo_corpus.json"


def write_kaldi_dir(d: Path, jobs: List[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / ".done").unlink(missing_ok=True)
    tables = {name: {j["utt"]: j[field] for j in jobs} for name, field in
              (("wav.scp", "wav"), ("text", "text"), ("utt2spk", "spk"), ("utt2accent", "domain"))}
    tables["spk2utt"] = kaldi_table.spk2utt(tables["utt2spk"])
    for name, rows in tables.items():
        kaldi_table.write_table(d / name, rows)
    code_record.write(d)  # which code made it
    write_text(d / ".done", f"{len(jobs)} utterances\n")  # last: marks the dir complete


def _diff(old: dict, new: dict, prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} is {a!r}, requested {b!r}")
    return out


def check_or_claim(root: Path, settings: dict, managed: Sequence[str], what: str) -> None:
    """Refuse a directory made with other settings or holding foreign data; claim it."""
    meta = root / META_NAME
    if meta.is_file():
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if old != settings:
            detail = "; ".join(_diff(old, settings))
            raise CorpusError(
                f"{what} {root} already holds a demo corpus made with other settings "
                f"({detail}). Refusing to overwrite it: use another {what} or delete {root}.")
        return
    clash = [n for n in managed if (root / n).exists()]
    if clash:
        raise CorpusError(
            f"{what} {root} already holds {', '.join(clash)}, not made by make_demo_corpus.py "
            f"(no {META_NAME}). Refusing to overwrite: use another {what} or move them away.")
    root.mkdir(parents=True, exist_ok=True)
    write_text(meta, json.dumps(settings, indent=1, sort_keys=True) + "\n")
