#!/usr/bin/env python3
"""Stage 2: 80-dim log-mel filterbank features (kaldi-native-fbank) for a data directory.

    python local/compute_fbank.py data/train dump/fbank/train --nj 2
    python local/compute_fbank.py data/train dump/fbank_pitch/train --feats_type fbank_pitch
    python local/compute_fbank.py data/train dump/raw/train --feats_type raw

With --feats_type fbank_pitch each frame also gets 3 pitch features (Kaldi's fbank+pitch idea,
computed by ``pitch_features`` of espnet_hdmole/asr/speech_features.py): the voicing strength, the log F0 relative to the
utterance's mean (interpolated through unvoiced frames) and its slope. Mandarin tones, and the
demo's accents, are pitch contours that 80 mel bands resolve poorly.

With --feats_type raw (for encoders that take waveforms, e.g. whisper) it writes wav.scp and
speech_shape in samples instead (audio must already be at --fs).

Writes into the output dir: feats.scp + feats.<job>.ark (kaldiio), speech_shape ('uid frames,dim'),
and copies text, utt2spk, spk2utt, utt2accent. With --cmvn_stats FILE it also writes global CMVN
statistics (count, sum, sum_square: ESPnet's GlobalMVN format).

Audio must be mono with finite samples (data_dir.samples_problem): anything else stops the run with
one 'ERROR: <data>/wav.scp:<line>: utterance ...' line and exit status 1.

Skips a directory that is done for the same inputs and settings: .done is a JSON record of the
sha256 of wav.scp, text and utt2accent and of the settings. When something differs (or .done is of
an older version, one hex line), it refuses unless --overwrite true, and then prints why the
features are redone, e.g. 'dump/fbank/train: data/train/text changed since the features were made:
redone'.
"""
import argparse
import hashlib
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import code_record  # noqa: E402
from data_dir import DataDirError, read_table, samples_problem, validate  # noqa: E402
from package_modules import package_module  # noqa: E402

speech_features = package_module("asr.speech_features")  # the feature math, shared with packed systems

INPUTS = ("wav.scp", "text", "utt2accent")  # the files the features (and .done) depend on
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # sample formats that can hold NaN/inf


def fbank_of(path: str, num_mel_bins: int, fs: int, pitch: bool = False) -> np.ndarray:
    import soundfile

    wav, sr = soundfile.read(path, dtype="float32", always_2d=True)
    problem = samples_problem(wav)
    if problem:
        raise ValueError(problem)
    return speech_features.fbank_features(wav[:, 0], sr, fs, num_mel_bins, pitch)


def run_job(args):
    """-> (job, shape lines, None), or (job, [], (line, error naming wav.scp:line and the utterance))."""
    job, items, out_dir, num_mel_bins, fs, scp_name, pitch = args
    import kaldiio

    ark = Path(out_dir) / f"feats.{job}.ark"
    scp = Path(out_dir) / f"feats.{job}.scp"
    shapes = []
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as w:
        for n, (uid, path) in items:
            try:
                x = fbank_of(path, num_mel_bins, fs, pitch)
            except Exception as e:  # noqa: BLE001 (reported as one line by the parent)
                why = str(e).replace("\n", " ")
                return job, [], (n, f"{scp_name}:{n}: utterance '{uid}' ({path}): {why}")
            w(uid, x)
            shapes.append(f"{uid} {x.shape[0]},{x.shape[1]}")
    return job, shapes, None


def write_raw(data: Path, out: Path, wavs, fs: int, done: Path, fp: dict) -> int:
    import soundfile

    shapes = []
    for n, (uid, path) in wavs:
        where = f"ERROR: {data / 'wav.scp'}:{n}: utterance '{uid}' ({path})"
        try:
            info = soundfile.info(path)
            problem = None
            if info.channels != 1 or info.subtype in FLOAT_SUBTYPES:
                problem = samples_problem(soundfile.read(path, always_2d=True)[0])
        except Exception as e:  # noqa: BLE001
            print(f"{where}: cannot read the audio: {e}", file=sys.stderr)
            return 1
        if problem:
            print(f"{where}: {problem}", file=sys.stderr)
            return 1
        if info.samplerate != fs:
            print(f"{where}: the audio is {info.samplerate} Hz; raw features need {fs} Hz", file=sys.stderr)
            return 1
        shapes.append(f"{uid} {info.frames}")
    (out / "speech_shape").write_text("\n".join(shapes) + "\n")
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2accent"):
        shutil.copy(data / name, out / name)
    print(f"{data} -> {out}: {len(shapes)} utterances (raw audio)", file=sys.stderr)
    code_record.write(done.parent)  # which code made them
    done.write_text(json.dumps(fp, sort_keys=True) + "\n")
    return 0


def fingerprint(data_dir: Path, settings: dict) -> dict:
    fp = {name: hashlib.sha256((data_dir / name).read_bytes()).hexdigest() for name in INPUTS}
    fp["settings"] = settings
    return fp


def stale_reason(done: Path, fp: dict, data_dir: Path, cmvn_stats) -> str:
    """Why the features recorded in .done are not up to date; '' when they are."""
    try:
        old = json.loads(done.read_text())
    except ValueError:
        old = None
    if not isinstance(old, dict):
        return "the features were made by an older version of compute_fbank.py (no per-input record in .done)"
    why = [str(data_dir / name) for name in INPUTS if old.get(name) != fp[name]]
    why = [f"{', '.join(why)} changed since the features were made"] if why else []
    was = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    diff = [f"{k} {was.get(k)} -> {v}" for k, v in fp["settings"].items() if was.get(k) != v]
    if diff:
        why.append(f"the settings changed since the features were made ({', '.join(diff)})")
    if not why and cmvn_stats is not None and not Path(cmvn_stats).exists():
        why.append(f"the CMVN statistics {cmvn_stats} are missing")
    return "; ".join(why)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--nj", type=int, default=2, help="parallel jobs")
    ap.add_argument("--num_mel_bins", type=int, default=80)
    ap.add_argument("--fs", type=int, default=16000, help="audio is resampled to this rate")
    ap.add_argument("--cmvn_stats", default=None, help="also write global CMVN stats (npz) here")
    ap.add_argument("--overwrite", default="false", choices=["true", "false"])
    ap.add_argument("--feats_type", default="fbank", choices=["fbank", "fbank_pitch", "raw"])
    a = ap.parse_args(argv)
    data, out = Path(a.data_dir), Path(a.out_dir)
    settings = {"num_mel_bins": a.num_mel_bins, "fs": a.fs, "feats_type": a.feats_type}
    try:
        validate(data, check_audio=False)
    except DataDirError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    fp = fingerprint(data, settings)
    done = out / ".done"
    if done.exists():
        why = stale_reason(done, fp, data, a.cmvn_stats)
        if not why:
            print(f"{out}: features are up to date, skipped", file=sys.stderr)
            return 0
        if a.overwrite != "true":
            print(f"ERROR: {out} holds features of other data or settings ({why}); remove it or pass "
                  "--overwrite true", file=sys.stderr)
            return 1
        print(f"{out}: {why}: redone", file=sys.stderr)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wavs = list(enumerate(read_table(data / "wav.scp").items(), 1))  # (line, (uid, path))
    if a.feats_type == "raw":
        return write_raw(data, out, wavs, a.fs, done, fp)
    nj = max(1, min(a.nj, len(wavs)))
    scp = str(data / "wav.scp")
    pitch = a.feats_type == "fbank_pitch"
    chunks = [(j + 1, wavs[j::nj], str(out), a.num_mel_bins, a.fs, scp, pitch) for j in range(nj)]
    t0 = time.time()
    shapes = []
    try:
        if nj == 1:
            results = [run_job(chunks[0])]
        else:
            with mp.get_context("fork").Pool(nj) as pool:
                results = pool.map(run_job, chunks)
    except Exception as e:  # noqa: BLE001
        print(f"ERROR: feature extraction for {data} failed: {e}", file=sys.stderr)
        return 1
    failed = sorted(problem for _, _, problem in results if problem)  # (line, message)
    if failed:
        more = f" ({len(failed) - 1} more job(s) stopped at a bad file too)" if len(failed) > 1 else ""
        print(f"ERROR: {failed[0][1]}{more}", file=sys.stderr)
        return 1
    scp_lines = []
    for job, sh, _ in sorted(results):
        shapes += sh
        scp_lines += (out / f"feats.{job}.scp").read_text().splitlines()
        (out / f"feats.{job}.scp").unlink()
    (out / "feats.scp").write_text("\n".join(sorted(scp_lines)) + "\n")
    (out / "speech_shape").write_text("\n".join(sorted(shapes)) + "\n")
    for name in ("text", "utt2spk", "spk2utt", "utt2accent"):
        shutil.copy(data / name, out / name)
    frames = sum(int(s.split()[1].split(",")[0]) for s in shapes)
    if a.cmvn_stats:
        import kaldiio

        dim = a.num_mel_bins + (3 if pitch else 0)
        count, s1, s2 = 0, np.zeros(dim), np.zeros(dim)
        for _, x in kaldiio.load_scp_sequential(str(out / "feats.scp")):
            count += x.shape[0]
            s1 += x.sum(0)
            s2 += (x.astype(np.float64) ** 2).sum(0)
        Path(a.cmvn_stats).parent.mkdir(parents=True, exist_ok=True)
        np.savez(a.cmvn_stats, count=np.array(count), sum=s1, sum_square=s2)
    dt = time.time() - t0
    print(f"{data} -> {out}: {len(shapes)} utterances, {frames / 100:.0f} s of audio in {dt:.1f} s "
          f"({frames / 100 / max(dt, 1e-9):.0f}x real time, {nj} jobs)", file=sys.stderr)
    code_record.write(done.parent)  # which code made them
    done.write_text(json.dumps(fp, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
