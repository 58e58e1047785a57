#!/usr/bin/env python3
"""Prepare KeSpeech as Kaldi-style data directories (stage 1 of the recipe, real data).

Where KeSpeech comes from
-------------------------
KeSpeech (NeurIPS 2021 Datasets and Benchmarks track: 1,542 hours, 27,237
speakers, standard Mandarin and 8 Mandarin subdialects) is distributed under a
licence, not as a public download.  See https://github.com/KeSpeech/KeSpeech:
you sign the licence agreement there (academic, non-commercial use), send it to
the maintainers and receive a download link.  Nothing in this recipe downloads
it; unpack it somewhere and pass that directory as ``--kespeech``.

Layout this script reads (``$KESPEECH`` is the corpus root)::

    $KESPEECH/Audio/<speaker>/phase{1,2}/<utt>.wav
    $KESPEECH/Tasks/ASR/<subset>/{wav.scp,text,utt2spk,utt2subdialect}
        subset: train_phase1 train_phase2 dev_phase1 dev_phase2 test

* ``wav.scp``: ``<utt> <path>``, the path RELATIVE to the corpus root
  (e.g. ``Audio/1000001/phase1/1000001_5a0d7b24.wav``);
* ``text``: ``<utt> <Chinese transcript>``, possibly with tags such as
  ``<SPOKEN_NOISE>``, ``<NOISE>``, ``[laughter]`` and punctuation;
* ``utt2spk``: ``<utt> <speaker>``;
* ``utt2subdialect``: ``<utt> <label>``, one of the 9 labels Mandarin, Beijing,
  Jiang-Huai, Jiao-Liao, Ji-Lu, Lan-Yin, Northeastern, Southwestern, Zhongyuan.

What it writes (``DATA`` is ``--out_dir``)::

    DATA/train            union of --train_subsets (all 9 labels)
    DATA/dev              union of --dev_subsets
    DATA/test_<Label>     Tasks/ASR/test split by label, e.g. DATA/test_Jiang-Huai
    DATA/source_test      the source domain (standard Mandarin) test set: the
                          Kaldi dir given with --source_dir, or else KeSpeech's
                          own test utterances labelled Mandarin
    DATA/accents.txt      the 9 labels, one per line, in the fixed order above
    DATA/.kespeech.json   the settings the directories were prepared with

Each directory holds ``wav.scp text utt2spk spk2utt utt2accent`` sorted by
utterance id in byte order (``LC_ALL=C sort``) with the same ids in every file,
plus a ``.done`` marker written last.  ``wav.scp`` paths are absolute;
``utt2accent`` holds the ``utt2subdialect`` labels (``Mandarin`` for
--source_dir).  Transcripts are normalised: tags, punctuation (Chinese,
full-width and ASCII), whitespace and invisible control/format characters are
removed, every other character is kept unchanged.  Utterances left with an
empty transcript are dropped and counted in the log (stderr).

Tag rule: a tag is a span in ``< >``, ``[ ]``, ``( )`` or ``{ }`` (ASCII or
full-width ``＜＞［］｛｝``) with none of these brackets inside, e.g.
``<SPOKEN_NOISE>`` ``[laughter]`` ``(noise)`` ``{breath}``: removed with its
content.  A transcript still holding one of these brackets afterwards (an
unclosed, stray or nested tag such as ``<SPOKEN_NOISE``) is refused
(``<text>:<line>: utterance '<id>' has a malformed tag``, all such lines
counted, 5 shown), in KeSpeech and --source_dir alike.  Chinese brackets
``（）【】《》`` are punctuation: removed, the words inside kept.

Everything is validated before anything is written: missing corpus root,
subset directory or file; a subset without utterances; malformed lines (with
file:line) and tags; unknown subdialect labels; utterance ids that disagree
between the four files of a subset; duplicate ids across subsets; audio files
that do not exist, or (``--check_audio true``, the default: data_dir.py's
header checks) are unreadable, not mono, truncated, or hold fewer 20 ms frames
than their transcript has characters.

Directories are built in a temporary directory under DATA and renamed into
place.  Re-running with the same settings skips complete directories.  An
existing directory that is incomplete (no ``.done``), was not written by this
script, or was prepared with other settings (another corpus root, other
subsets, another --source_dir; recorded in DATA/.kespeech.json) is never
overwritten: the script stops and tells you to remove it.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data_dir import audio_problem  # noqa: E402  (the audio checks shared with data_dir.py)
from kespeech_common import LABELS, MAX_EXAMPLES, NAME, KeSpeechError, Utt, examples, log  # noqa: E402
from kespeech_output import check_output, is_complete, write_output  # noqa: E402  (DATA/, written last)
from package_modules import package_module  # noqa: E402
from transcript_text import MalformedTag, T2SUnavailable, normalize_text  # noqa: E402,F401  (the tag/punctuation rule)

kaldi_table = package_module("utils.kaldi_table")
# '<utterance-id> <value>' files, KeSpeechError naming file:line when malformed
read_table = functools.partial(kaldi_table.read_table, error=KeSpeechError)

SOURCE_LABEL = "Mandarin"
SUBSETS = ("train_phase1", "train_phase2", "dev_phase1", "dev_phase2", "test")
TEST_SUBSET = "test"
SUBSET_FILES = ("wav.scp", "text", "utt2spk", "utt2subdialect")
FORMAT_VERSION = 2  # 2: full-width letters and digits written as ASCII


# --------------------------------------------------------------------------
# Text normalisation
# --------------------------------------------------------------------------
# the rule itself (tags, punctuation, full-width forms, t2s) is local/transcript_text.py: normalize_text, MalformedTag


def normalize_table(table: kaldi_table.Table, t2s: bool = False) -> Tuple[Dict[str, str], List[str]]:
    """-> (utterance -> normalised transcript, one 'file:line: ...' per malformed tag)."""
    texts, bad = {}, []
    for utt, raw in table.items():
        try:
            texts[utt] = normalize_text(raw, t2s=t2s)
        except MalformedTag as e:
            bad.append(f"{table.where(utt)}: utterance {utt!r} has {e}")
    return texts, bad


def malformed_tags(bad: List[str]) -> KeSpeechError:
    return KeSpeechError(f"{len(bad)} transcript(s) hold a malformed tag (a tag is <...> [...] "
                         "(...) or {...} with no bracket inside, e.g. <NOISE> (noise); a bracket "
                         f"left after removing the tags is refused: fix these lines):{examples(bad)}")


# --------------------------------------------------------------------------
# Reading and validating
# --------------------------------------------------------------------------
def check_ids_agree(d: Path, tables: Dict[str, kaldi_table.Table]) -> None:
    """All files of a data dir must list the same utterance ids."""
    union = set().union(*tables.values())
    problems = []
    for name, table in tables.items():
        missing = sorted(union - set(table))
        if not missing:
            continue
        ex = []
        for utt in missing[:MAX_EXAMPLES]:
            src = next(f"{other}:{t.lines[utt]}" for other, t in tables.items() if utt in t)
            ex.append(f"{utt} (listed in {src})")
        more = f" and {len(missing) - MAX_EXAMPLES} more" if len(missing) > MAX_EXAMPLES else ""
        problems.append(f"{len(missing)} id(s) missing from {name} ({len(table)} ids), "
                        f"e.g. {', '.join(ex)}{more}")
    if problems:
        raise KeSpeechError(
            f"{d}: utterance ids disagree between {', '.join(tables)} (every file must list "
            f"the same utterances):\n  " + "\n  ".join(problems))


def check_labels(table: kaldi_table.Table) -> None:
    bad = sorted(((table.lines[utt], utt, lab) for utt, lab in table.items() if lab not in LABELS))
    if not bad:
        return
    n, utt, lab = bad[0]
    hint = ""
    close = [k for k in LABELS if k.lower() == lab.lower()]
    if close:
        hint = f" (did you mean {close[0]!r}? labels are case-sensitive)"
    total = f"; {len(bad)} lines with unknown labels in all" if len(bad) > 1 else ""
    raise KeSpeechError(
        f"{table.path}:{n}: unknown subdialect label {lab!r} for utterance {utt!r}{hint}; "
        f"expected one of the 9 KeSpeech labels: {', '.join(LABELS)}{total}")


def wav_value(where: str, value: str, source: bool) -> bool:
    """-> True if the wav.scp value is a command (allowed for --source_dir only)."""
    if value.endswith("|"):
        if source:
            return True
        raise KeSpeechError(f"{where}: expected a path to a WAV file relative to the "
                            f"corpus root, got a command {value!r}")
    return False


def drop_empty(name: str, utts: List[Utt], empty: List[str]) -> None:
    if empty:
        log(f"{name}: dropped {len(empty)} of {len(utts) + len(empty)} utterances whose "
            f"transcript is empty after removing tags/punctuation (e.g. "
            f"{', '.join(sorted(empty)[:MAX_EXAMPLES])})")


def read_subset(root: Path, name: str, option: str, t2s: bool = False) -> Tuple[List[Utt], List[str], List[str]]:
    """-> (kept utterances, ids dropped for an empty transcript, malformed-tag messages)."""
    d = root / "Tasks" / "ASR" / name
    if not d.is_dir():
        present = sorted(p.name for p in (root / "Tasks" / "ASR").iterdir() if p.is_dir())
        raise KeSpeechError(
            f"missing KeSpeech subset directory {d} (asked for by {option}); expected "
            f"{root}/Tasks/ASR/<subset>/{{{','.join(SUBSET_FILES)}}}. Subsets present: "
            f"{' '.join(present) or 'none'}")
    tables = {
        "wav.scp": read_table(d / "wav.scp", "relative path of the WAV file"),
        "text": read_table(d / "text", "transcript", allow_empty=True),
        "utt2spk": read_table(d / "utt2spk", "speaker", single_token=True),
        "utt2subdialect": read_table(d / "utt2subdialect", "subdialect label", single_token=True),
    }
    check_ids_agree(d, tables)
    if not tables["wav.scp"]:
        raise KeSpeechError(f"KeSpeech subset {d} (asked for by {option}) holds no utterances: "
                            f"its {', '.join(SUBSET_FILES)} are empty; expected "
                            "'<utterance-id> <value>' lines (an incomplete copy of the corpus?)")
    check_labels(tables["utt2subdialect"])
    texts, bad = normalize_table(tables["text"], t2s)
    utts, empty = [], []
    for utt, rel in tables["wav.scp"].items():
        where = tables["wav.scp"].where(utt)
        wav_value(where, rel, source=False)
        text = texts.get(utt)  # None: malformed tag, reported by the caller
        if text == "":
            empty.append(utt)
        elif text:
            utts.append(Utt(utt, os.path.join(root, rel), text, tables["utt2spk"][utt],
                            tables["utt2subdialect"][utt], where))
    drop_empty(name, utts, empty)
    if not utts and not bad:
        raise KeSpeechError(f"KeSpeech subset {d} (asked for by {option}): no utterances left, "
                            f"all {len(empty)} transcripts are empty after removing tags and "
                            "punctuation")
    return utts, empty, bad


def read_source_dir(src: Path, t2s: bool = False) -> List[Utt]:
    if not src.is_dir():
        raise KeSpeechError(f"--source_dir {src} does not exist or is not a directory; "
                            "expected a Kaldi-style dir with wav.scp, text (and optionally "
                            "utt2spk)")
    if (src / "segments").exists():
        raise KeSpeechError(f"--source_dir {src} has a segments file; only whole-file "
                            "utterances (wav.scp keyed by utterance id) are supported")
    tables = {"wav.scp": read_table(src / "wav.scp", "path of the audio file"),
              "text": read_table(src / "text", "transcript", allow_empty=True)}
    if (src / "utt2spk").is_file():
        tables["utt2spk"] = read_table(src / "utt2spk", "speaker", single_token=True)
    else:
        log(f"--source_dir {src} has no utt2spk: each utterance is its own speaker")
    check_ids_agree(src, tables)
    texts, bad = normalize_table(tables["text"], t2s)
    if bad:
        raise malformed_tags(bad)
    utts, empty, commands = [], [], 0
    for utt, value in tables["wav.scp"].items():
        where = tables["wav.scp"].where(utt)
        is_cmd = wav_value(where, value, source=True)
        commands += is_cmd
        text = texts[utt]
        if not text:
            empty.append(utt)
            continue
        spk = tables["utt2spk"][utt] if "utt2spk" in tables else utt
        # relative paths: relative to the current directory, as Kaldi/ESPnet tools read them
        wav = value if is_cmd else os.path.abspath(value)
        utts.append(Utt(utt, wav, text, spk, SOURCE_LABEL, where))
    if commands:
        log(f"--source_dir: {commands} wav.scp entries are commands ('... |'); "
            "they are copied as they are and not checked")
    drop_empty(f"--source_dir {src}", utts, empty)
    if not utts:
        raise KeSpeechError(f"--source_dir {src}: no utterances left (wav.scp empty or all "
                            "transcripts empty after normalisation)")
    return utts


def check_duplicates(groups: Dict[str, List[str]]) -> None:
    """groups: subset -> all its utterance ids (kept or dropped)."""
    first: Dict[str, str] = {}
    dups = []
    for subset, ids in groups.items():
        for utt in ids:
            if utt in first:
                dups.append(f"{utt!r} is in both {first[utt]} and {subset}")
            else:
                first[utt] = subset
    if dups:
        raise KeSpeechError(f"{len(dups)} utterance id(s) appear in more than one subset; ids "
                            f"must be unique across subsets:{examples(dups)}")


def _probe(args: Tuple[str, str, bool]) -> Tuple[str, Optional[str], Optional[int]]:
    """-> ('ok' | 'missing' | 'unreadable' | 'unusable', error, sample rate)."""
    path, text, read_header = args
    if not os.path.isfile(path):
        return "missing", None, None
    if not read_header:
        return "ok", None, None
    problem, rate = audio_problem(path, text)  # header only, no decoding
    status = "ok" if problem is None else "unreadable" if rate is None else "unusable"
    return status, problem, rate


def check_audio(utts: List[Utt], read_header: bool, nj: int, root_hint: str) -> None:
    todo = [u for u in utts if not u.wav.endswith("|")]
    t0 = time.time()
    with ThreadPoolExecutor(max(1, nj)) as ex:
        results = list(ex.map(_probe, [(u.wav, u.text, read_header) for u in todo], chunksize=256))
    missing = [f"{u.where}: {u.wav} (utterance {u.id})"
               for u, (st, _, _) in zip(todo, results) if st == "missing"]
    if missing:
        raise KeSpeechError(f"{len(missing)} audio file(s) listed in wav.scp do not exist:"
                            f"{examples(missing)}\n{root_hint}")
    for kind, why in (("unreadable", "are unreadable audio (soundfile could not read the header"),
                      ("unusable", "are unusable (expected complete mono audio with at least "
                                   "20 ms per transcript character")):
        bad = [f"{u.where}: {u.wav} (utterance {u.id}): {err}"
               for u, (st, err, _) in zip(todo, results) if st == kind]
        if bad:
            raise KeSpeechError(f"{len(bad)} audio file(s) {why}; pass --check_audio false to "
                                f"skip this check):{examples(bad)}")
    rates: Dict[int, int] = {}
    for _, _, sr in results:
        if sr is not None:
            rates[sr] = rates.get(sr, 0) + 1
    what = "exist and have readable headers" if read_header else "exist"
    rate_txt = (", sample rates: " + ", ".join(f"{k} Hz x {v}" for k, v in sorted(rates.items()))
                if rates else "")
    log(f"checked {len(todo)} audio files: all {what}{rate_txt} ({time.time() - t0:.1f} s)")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def _unique(option: str, names: Sequence[str]) -> List[str]:
    seen = []
    for n in names:
        if n in seen:
            raise KeSpeechError(f"{option}: subset {n!r} given twice")
        if "/" in n or n in (".", ".."):
            raise KeSpeechError(f"{option}: {n!r} is not a subset name (expected names under "
                                f"Tasks/ASR such as {' '.join(SUBSETS)})")
        seen.append(n)
    return seen


def prepare(kespeech: str, out_dir: str, train_subsets: Sequence[str],
            dev_subsets: Sequence[str], source_dir: Optional[str] = None,
            check_audio_header: bool = True, nj: int = 8, t2s: bool = False) -> dict:
    """Prepare (or skip) the data dirs; -> {dir name: number of utterances}."""
    t0 = time.time()
    root = Path(os.path.abspath(os.path.expanduser(kespeech)))
    out = Path(os.path.abspath(os.path.expanduser(out_dir)))
    src = Path(os.path.abspath(os.path.expanduser(source_dir))) if source_dir else None
    train_subsets = _unique("--train_subsets", train_subsets)
    dev_subsets = _unique("--dev_subsets", dev_subsets)
    overlap = [s for s in train_subsets if s in dev_subsets]
    if overlap:
        raise KeSpeechError(f"subset(s) {' '.join(overlap)} given both as --train_subsets "
                            "and --dev_subsets")
    if TEST_SUBSET in train_subsets + dev_subsets:
        raise KeSpeechError(f"'{TEST_SUBSET}' is the test set (written as test_<Label>); do "
                            "not use it as a train or dev subset")
    settings = {"script": NAME, "format": FORMAT_VERSION, "kespeech": str(root),
                "train_subsets": train_subsets, "dev_subsets": dev_subsets,
                "source_dir": str(src) if src else None}
    if t2s:  # (only when on: directories prepared before the option existed stay valid)
        settings["t2s"] = True

    meta = check_output(out, settings)
    if meta is not None:
        dirs = meta.get("dirs", {})
        if dirs and all(is_complete(out / d) for d in dirs) and \
                (out / "accents.txt").is_file():
            log(f"{out} is complete (prepared from {root}: {' '.join(dirs)}); skipping")
            return {}

    if not root.is_dir():
        raise KeSpeechError(f"KeSpeech corpus root {root} does not exist or is not a "
                            "directory (--kespeech); see https://github.com/KeSpeech/KeSpeech "
                            "for how to obtain the corpus")
    if not (root / "Tasks" / "ASR").is_dir():
        inner = [p for p in root.iterdir() if (p / "Tasks" / "ASR").is_dir()]
        hint = f" (perhaps --kespeech {inner[0]}?)" if inner else ""
        raise KeSpeechError(f"{root} has no Tasks/ASR directory: --kespeech must be the "
                            f"KeSpeech root (the directory holding Audio/ and Tasks/){hint}")

    # read and validate everything before writing anything
    raw_ids: Dict[str, List[str]] = {}
    kept: Dict[str, List[Utt]] = {}
    malformed: List[str] = []
    for option, names in (("--train_subsets", train_subsets), ("--dev_subsets", dev_subsets),
                          ("the test set", [TEST_SUBSET])):
        for name in names:
            utts, empty, bad = read_subset(root, name, option, t2s)
            kept[name] = utts
            raw_ids[name] = [u.id for u in utts] + empty
            malformed += bad
    if malformed:
        raise malformed_tags(malformed)
    check_duplicates(raw_ids)

    # every subset holds utterances (read_subset), so train and dev do too
    sets: Dict[str, List[Utt]] = {
        "train": [u for s in train_subsets for u in kept[s]],
        "dev": [u for s in dev_subsets for u in kept[s]],
    }
    for lab in LABELS:
        test = [u for u in kept[TEST_SUBSET] if u.accent == lab]
        if test:
            sets[f"test_{lab}"] = test
        else:
            log(f"warning: Tasks/ASR/{TEST_SUBSET} has no utterances labelled {lab}; "
                f"test_{lab} is not written")
    if src is not None:
        sets["source_test"] = read_source_dir(src, t2s)
        log(f"source domain: --source_dir {src} is copied into source_test "
            f"({len(sets['source_test'])} utterances)")
    else:
        if "test_" + SOURCE_LABEL not in sets:
            raise KeSpeechError(f"no source-domain dir configured (--source_dir) and "
                                f"Tasks/ASR/{TEST_SUBSET} has no {SOURCE_LABEL} utterances: "
                                "give --source_dir")
        sets["source_test"] = list(sets["test_" + SOURCE_LABEL])
        log("no source-domain dir configured: KeSpeech's own Mandarin test utterances serve "
            f"as the source test set ({len(sets['source_test'])} utterances in source_test; "
            "give --source_dir to use a separate standard-Mandarin test set)")

    odd = sorted(u.id for u in sets["train"] + sets["dev"] + kept[TEST_SUBSET]
                 if not u.id.startswith(u.spk))
    if odd:
        log(f"warning: {len(odd)} utterance ids do not start with their speaker id (e.g. "
            f"{', '.join(odd[:MAX_EXAMPLES])}); Kaldi tools that need utt2spk and spk2utt "
            "in the same order may complain")
    todo = {n: u for n, u in sets.items() if not is_complete(out / n)}
    for n in sets:
        if n not in todo:
            log(f"{out / n} is complete (same settings); kept")
    check_audio([u for n in todo for u in todo[n]], check_audio_header, nj,
                f"Is --kespeech {root} the KeSpeech root (the directory holding Audio/ and "
                "Tasks/)? wav.scp paths are relative to it.")

    write_output(out, settings, sets, todo)  # claim DATA, write into a temporary dir, rename into place
    counts = {n: len(u) for n, u in sets.items()}
    log(f"wrote {len(todo)} directories into {out} in {time.time() - t0:.1f} s: "
        + ", ".join(f"{n} {c}" for n, c in counts.items()))
    return counts


def str2bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "yes", "1", "y"):
        return True
    if v in ("false", "no", "0", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=NAME,
        description="Prepare the licensed KeSpeech corpus (https://github.com/KeSpeech/KeSpeech;\n"
                    "obtained by signing its licence agreement) as Kaldi-style data directories\n"
                    "for the multi-accent (9 labels) LLM-based ASR recipe.",
        epilog=f"""input (KESPEECH = --kespeech):
  KESPEECH/Tasks/ASR/<subset>/{{wav.scp,text,utt2spk,utt2subdialect}}
  wav.scp paths relative to KESPEECH, e.g. Audio/1000001/phase1/1000001_5a0d7b24.wav

output (DATA = --out_dir):
  DATA/train, DATA/dev      unions of --train_subsets / --dev_subsets
  DATA/test_<Label>         Tasks/ASR/test split by label, e.g. DATA/test_Jiang-Huai
  DATA/source_test          --source_dir, or else the KeSpeech test utterances labelled Mandarin
  DATA/accents.txt          {' '.join(LABELS)}
  each with wav.scp (absolute paths) text utt2spk spk2utt utt2accent, sorted (LC_ALL=C)

Transcripts lose tags (<...> [...] (...) {{...}}; a stray bracket is refused),
punctuation and whitespace; utterances left empty are dropped (counted in the log).
Re-running skips complete directories; an existing output prepared differently or
incomplete is refused, never overwritten.""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kespeech", required=True, metavar="ROOT",
                   help="KeSpeech corpus root, the directory holding Audio/ and Tasks/")
    p.add_argument("--out_dir", required=True, metavar="DATA",
                   help="where the data directories go (e.g. data)")
    p.add_argument("--train_subsets", nargs="+", default=["train_phase1", "train_phase2"],
                   metavar="SUBSET", help="subsets of Tasks/ASR merged into DATA/train "
                   "(default: train_phase1 train_phase2)")
    p.add_argument("--dev_subsets", nargs="+", default=["dev_phase1", "dev_phase2"],
                   metavar="SUBSET", help="subsets of Tasks/ASR merged into DATA/dev "
                   "(default: dev_phase1 dev_phase2)")
    p.add_argument("--source_dir", default=None, metavar="DIR",
                   help="Kaldi-style dir (wav.scp, text, optionally utt2spk) of a standard "
                   "Mandarin test set, copied and normalised into DATA/source_test; relative "
                   "wav.scp paths are taken relative to the current directory. Default: "
                   "KeSpeech's own Mandarin test utterances")
    p.add_argument("--check_audio", type=str2bool, default=True, metavar="true|false",
                   help="read every audio header with soundfile (not a full decode) and refuse "
                   "unreadable, multi-channel, truncated audio, or audio too short for its "
                   "transcript; false only checks that the files exist (default: true)")
    p.add_argument("--nj", type=int, default=8,
                   help="threads for the audio checks (default: %(default)s)")
    p.add_argument("--t2s", type=str2bool, default=False, metavar="true|false",
                   help="also write traditional characters as simplified ones (OpenCC t2s; "
                   "KeSpeech's transcripts are simplified already) (default: false)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run with command line ``argv``; raises KeSpeechError on bad input."""
    args = get_parser().parse_args(argv)
    prepare(args.kespeech, args.out_dir, args.train_subsets, args.dev_subsets,
            source_dir=args.source_dir, check_audio_header=args.check_audio, nj=args.nj, t2s=args.t2s)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeSpeechError, T2SUnavailable) as e:
        print(f"{NAME}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{NAME}: interrupted; nothing half-written is left in place, run the same "
              "command again", file=sys.stderr)
        sys.exit(130)
