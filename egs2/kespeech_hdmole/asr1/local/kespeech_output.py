"""The KeSpeech preparation's output (prepare_kespeech.py): Kaldi-style data directories built in a
temporary directory under DATA and renamed into place, and the settings record DATA/.kespeech.json
that keeps an output prepared with other settings, incomplete, or not prepared by this script at
all from being overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import code_record
from kespeech_common import LABELS, NAME, KeSpeechError, Utt, log
from package_modules import package_module

kaldi_table = package_module("utils.kaldi_table")

OUT_FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2accent")
META_NAME = ".kespeech.json"
TMP_PREFIX = ".prepare_kespeech.tmp."
MANAGED = ["train", "dev", "source_test"] + [f"test_{lab}" for lab in LABELS]


def write_kaldi_dir(d: Path, utts: List[Utt]) -> None:
    """The tables (sorted by utterance id), the code record, then the ``.done`` marker."""
    d.mkdir(parents=True)
    tables = {name: {u.id: getattr(u, field) for u in utts} for name, field in
              (("wav.scp", "wav"), ("text", "text"), ("utt2spk", "spk"), ("utt2accent", "accent"))}
    tables["spk2utt"] = kaldi_table.spk2utt(tables["utt2spk"])
    for name in OUT_FILES:
        kaldi_table.write_table(d / name, tables[name])
    code_record.write(d)  # which code made it
    kaldi_table.write_file(d / ".done", f"{len(utts)} utterances\n")  # last


def is_complete(d: Path) -> bool:
    return (d / ".done").is_file() and all((d / f).is_file() for f in OUT_FILES)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_tmp(out: Path) -> None:
    for p in out.glob(TMP_PREFIX + "*"):
        suffix = p.name[len(TMP_PREFIX):]
        if suffix.isdigit() and int(suffix) != os.getpid() and not _pid_alive(int(suffix)):
            log(f"removing {p}, left by an interrupted run")
            shutil.rmtree(p, ignore_errors=True)


def check_output(out: Path, settings: dict) -> Optional[dict]:
    """Refuse foreign/incomplete/conflicting output; -> the recorded metadata, if any."""
    if out.exists() and not out.is_dir():
        raise KeSpeechError(f"--out_dir {out} exists and is not a directory")
    meta_path = out / META_NAME
    if not meta_path.is_file():
        clash = [n for n in MANAGED + ["accents.txt"] if (out / n).exists()]
        if clash:
            demo = (f" ({out / '.demo_corpus.json'} says it holds the demo corpus)"
                    if (out / ".demo_corpus.json").is_file() else "")
            raise KeSpeechError(
                f"{out / clash[0]} already exists but was not prepared by {NAME} from KeSpeech "
                f"(no {meta_path}){demo}. Refusing to overwrite it: remove "
                f"{' '.join(str(out / c) for c in clash)} (or use another --out_dir) and run "
                "again.")
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        old = meta["settings"]
    except (ValueError, KeyError, TypeError) as e:
        raise KeSpeechError(f"{meta_path} is unreadable ({e}); remove {out} and run "
                            "again") from None
    if old != settings:
        if old.get("kespeech") != settings["kespeech"]:
            what = (f"was prepared from another corpus root {old.get('kespeech')} (recorded in "
                    f"{meta_path}), not {settings['kespeech']}")
        else:
            diff = "; ".join(f"{k} was {old.get(k)!r}, now {settings.get(k)!r}"
                             for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
            what = f"was prepared with other settings ({diff}; recorded in {meta_path})"
        raise KeSpeechError(f"--out_dir {out} {what}. Refusing to overwrite it: remove {out} "
                            "(or use another --out_dir) and run again.")
    for n in MANAGED:
        if (out / n).exists() and not is_complete(out / n):
            raise KeSpeechError(
                f"{out / n} exists but is incomplete (no .done marker or missing files; an "
                f"interrupted or foreign preparation). Refusing to overwrite it: remove "
                f"{out / n} and run again.")
    return meta


def write_output(out: Path, settings: dict, sets: Dict[str, List[Utt]], todo: Dict[str, List[Utt]]) -> None:
    """Claim ``out`` (record ``settings`` and the size of every set), write the directories of
    ``todo`` into a temporary directory and rename them into place, then accents.txt."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    kaldi_table.write_file(out / META_NAME, json.dumps(
        {"settings": settings, "dirs": {n: len(u) for n, u in sets.items()}},
        indent=1, ensure_ascii=False) + "\n")
    tmp = out / f"{TMP_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, utts in todo.items():
            write_kaldi_dir(tmp / name, utts)
        for name in todo:
            os.rename(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kaldi_table.write_file(out / "accents.txt", "".join(lab + "\n" for lab in LABELS))
