#!/usr/bin/env python3
"""Reading and validating Kaldi-style data directories (wav.scp, text, utt2spk, spk2utt, utt2accent).

    python local/data_dir.py data/train [--accents data/accents.txt] [--check_audio true]

exits non-zero with a message naming the file, the line and what was expected.

Audio checks (--check_audio true, the default; also used by prepare_kespeech.py, and by
compute_fbank.py on the decoded samples): every file must have a readable header, hold samples,
be mono (convert with e.g. ``sox in.wav -c 1 out.wav``), and, for RIFF WAV files, hold all the
bytes its 'data' chunk declares (a truncated copy is refused; libsndfile would silently read
only what is left). Every transcript may hold at most one character (whitespace not counted)
per 20 ms of audio (duration_seconds / 0.02): more means the audio or the transcript is wrong.
"""
import argparse
import os
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from package_modules import package_module  # noqa: E402

kaldi_table = package_module("utils.kaldi_table")

REQUIRED = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2accent")
FRAME_SECONDS = 0.02  # the transcript-length rule: at most one character per 20 ms of audio


class DataDirError(ValueError):
    pass


def read_table(path, allow_empty_value: bool = False, key_name: str = "utterance id") -> Dict[str, str]:
    """'id value' lines, as ESPnet reads them: file present and not empty, ids unique and sorted
    (byte order), no blank line or byte-order mark, values present (espnet_hdmole/utils/kaldi_table.py)."""
    return kaldi_table.read_table(path, key_name=key_name, allow_empty=allow_empty_value, sorted_ids=True,
                                  skip_blank_lines=False, strip_bom=False, require_rows=True,
                                  error=DataDirError)


def channels_problem(channels: int) -> Optional[str]:
    if channels == 1:
        return None
    return (f"the audio has {channels} channels; expected mono (1 channel): convert it, e.g. "
            "sox in.wav -c 1 out.wav")


def riff_data_problem(path) -> Optional[str]:
    """RIFF/WAVE files only: the 'data' chunk must not declare more bytes than the file holds.

    Other formats, a streamed WAV (size 0xFFFFFFFF) and a file whose chunks cannot be walked to
    'data' are not checked here (soundfile reports those it cannot read)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        pos, frame_bytes = 12, 0
        while pos + 8 <= size:
            f.seek(pos)
            cid, clen = struct.unpack("<4sI", f.read(8))
            fmt = f.read(16) if cid == b"fmt " and clen >= 16 else b""
            if len(fmt) == 16:
                frame_bytes = struct.unpack("<12xH2x", fmt)[0]  # nBlockAlign: bytes per frame
            if cid == b"data":
                have = size - pos - 8
                if clen == 0xFFFFFFFF or clen <= have:
                    return None

                def amount(n):
                    return f"{n} bytes" + (f" ({n // frame_bytes} frames)" if frame_bytes else "")
                return (f"truncated WAV file: its header declares {amount(clen)} of audio but the "
                        f"file holds only {amount(have)}; copy or extract it again")
            pos += 8 + clen + (clen & 1)
    return None


def audio_problem(path: str, transcript: Optional[str] = None) -> Tuple[Optional[str], Optional[int]]:
    """Header checks of one audio file (no decoding) and, given the transcript, its length rule.

    -> (what is wrong or None, sample rate; None when soundfile cannot read the header)."""
    import soundfile

    try:
        info = soundfile.info(path)
    except Exception as e:  # noqa: BLE001 (soundfile raises several types)
        return f"cannot read the audio header: {type(e).__name__}: {e}".strip(), None
    rate = int(info.samplerate)
    try:
        problem = riff_data_problem(path) or channels_problem(info.channels)
    except OSError as e:
        return f"cannot read the file: {e}", rate
    if problem:
        return problem, rate
    if info.frames <= 0:
        return "the file holds no audio samples", rate
    if transcript is not None:
        chars = len("".join(transcript.split()))
        seconds = info.frames / info.samplerate
        slots = int(seconds / FRAME_SECONDS + 1e-9)
        if chars > slots:
            return (f"the transcript has {chars} characters but the audio lasts only {seconds:.2f} s, "
                    f"room for {slots} (expected at most one character per "
                    f"{FRAME_SECONDS * 1000:.0f} ms): wrong audio or wrong transcript"), rate
    return None, rate


def samples_problem(x) -> Optional[str]:
    """Checks of decoded audio, an array (frames, channels): mono, finite samples."""
    import numpy as np

    problem = channels_problem(x.shape[1])
    if problem:
        return problem
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        return (f"the audio has {bad} of {x.size} samples that are NaN or infinite; expected finite samples "
                "(the file is corrupt or was written from broken data)")
    return None


def validate(d, accents: Optional[List[str]] = None, check_audio: bool = True) -> int:
    """Validate a data dir; returns the number of utterances."""
    d = Path(d)
    if not d.is_dir():
        raise DataDirError(f"{d}: data directory does not exist")
    tables = {}
    for name in REQUIRED:
        tables[name] = read_table(d / name, allow_empty_value=(name == "text"),
                                  key_name="speaker id" if name == "spk2utt" else "utterance id")
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
    s2u = {s: sorted(v.split()) for s, v in tables["spk2utt"].items()}
    if s2u != {s: v.split() for s, v in kaldi_table.spk2utt(tables["utt2spk"]).items()}:
        raise DataDirError(f"{d}: spk2utt does not match utt2spk")
    if accents is not None:
        for n, (uid, a) in enumerate(tables["utt2accent"].items(), 1):
            if a not in accents:
                raise DataDirError(f"{d / 'utt2accent'}:{n}: '{uid}' has unknown accent label '{a}'; known: {accents}")
    if check_audio:
        items = list(tables["wav.scp"].items())
        for n, (uid, path) in enumerate(items, 1):
            if path.endswith("|"):
                raise DataDirError(f"{d / 'wav.scp'}:{n}: pipes are not supported, give a file path")
        with ThreadPoolExecutor(8) as ex:
            results = ex.map(lambda it: audio_problem(it[1], tables["text"][it[0]]), items)
            for n, ((uid, path), (problem, _)) in enumerate(zip(items, results), 1):
                if problem:
                    raise DataDirError(f"{d / 'wav.scp'}:{n}: utterance '{uid}' ({path}): {problem}")
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
