"""Stage 2: 80-dim log-mel filterbank features (kaldi-native-fbank) for a data directory.

    python local/compute_fbank.py data/train dump/fbank/train --nj 2
    python local/compute_fbank.py data/train dump/raw/train --feats_type raw

With --feats_type raw (for encoders that take waveforms, e.g. whisper) it writes wav.scp and
speech_shape in samples instead (audio must already be at --fs).

Writes into the output dir: feats.scp + feats.<job>.ark (kaldiio), speech_shape ('uid frames,dim'),
and copies text, utt2spk, spk2utt, utt2accent. With --cmvn_stats FILE it also writes global CMVN
statistics (count, sum, sum_square: ESPnet's GlobalMVN format). Skips a directory that is done for
the same wav.scp and settings (.done holds their fingerprint); a different one is an error unless
--overwrite true.
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
from data_dir import DataDirError, read_table, validate  # noqa: E402


def fbank_of(path: str, num_mel_bins: int, fs: int) -> np.ndarray:
    import kaldi_native_fbank as knf
    import soundfile

    wav, sr = soundfile.read(path, dtype="float32", always_2d=True)
    wav = wav[:, 0]
    if sr != fs:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, fs)
        wav = resample_poly(wav, fs // g, sr // g).astype(np.float32)
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = fs
    opts.mel_opts.num_bins = num_mel_bins
    f = knf.OnlineFbank(opts)
    f.accept_waveform(fs, (wav * 32768.0).tolist())
    f.input_finished()
    if f.num_frames_ready == 0:
        raise ValueError(f"audio '{path}' is shorter than one frame")
    return np.stack([f.get_frame(i) for i in range(f.num_frames_ready)]).astype(np.float32)


def run_job(args):
    job, items, out_dir, num_mel_bins, fs = args
    import kaldiio

    ark = Path(out_dir) / f"feats.{job}.ark"
    scp = Path(out_dir) / f"feats.{job}.scp"
    shapes = []
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as w:
        for uid, path in items:
            x = fbank_of(path, num_mel_bins, fs)
            w(uid, x)
            shapes.append(f"{uid} {x.shape[0]},{x.shape[1]}")
    return job, shapes


def write_raw(data: Path, out: Path, wavs, fs: int, done: Path, fp: str) -> int:
    import soundfile

    shapes = []
    for n, (uid, path) in enumerate(wavs, 1):
        try:
            info = soundfile.info(path)
        except Exception as e:  # noqa: BLE001
            print(f"ERROR: {data / 'wav.scp'}:{n}: cannot read '{path}': {e}", file=sys.stderr)
            return 1
        if info.samplerate != fs:
            print(f"ERROR: {data / 'wav.scp'}:{n}: '{path}' is {info.samplerate} Hz; raw features need {fs} Hz",
                  file=sys.stderr)
            return 1
        shapes.append(f"{uid} {info.frames}")
    (out / "speech_shape").write_text("\n".join(shapes) + "\n")
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2accent"):
        shutil.copy(data / name, out / name)
    print(f"{data} -> {out}: {len(shapes)} utterances (raw audio)", file=sys.stderr)
    done.write_text(fp + "\n")
    return 0


def fingerprint(data_dir: Path, settings: dict) -> str:
    h = hashlib.sha256()
    for name in ("wav.scp", "text", "utt2accent"):
        h.update((data_dir / name).read_bytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--nj", type=int, default=2, help="parallel jobs")
    ap.add_argument("--num_mel_bins", type=int, default=80)
    ap.add_argument("--fs", type=int, default=16000, help="audio is resampled to this rate")
    ap.add_argument("--cmvn_stats", default=None, help="also write global CMVN stats (npz) here")
    ap.add_argument("--overwrite", default="false", choices=["true", "false"])
    ap.add_argument("--feats_type", default="fbank", choices=["fbank", "raw"])
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
        if done.read_text().strip() == fp and (a.cmvn_stats is None or Path(a.cmvn_stats).exists()):
            print(f"{out}: features are up to date, skipped", file=sys.stderr)
            return 0
        if a.overwrite != "true":
            print(f"ERROR: {out} holds features of other data or settings; remove it or pass --overwrite true",
                  file=sys.stderr)
            return 1
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wavs = list(read_table(data / "wav.scp").items())
    if a.feats_type == "raw":
        return write_raw(data, out, wavs, a.fs, done, fp)
    nj = max(1, min(a.nj, len(wavs)))
    chunks = [(j + 1, wavs[j::nj], str(out), a.num_mel_bins, a.fs) for j in range(nj)]
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
    scp_lines = []
    for job, sh in sorted(results):
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

        count, s1, s2 = 0, np.zeros(a.num_mel_bins), np.zeros(a.num_mel_bins)
        for _, x in kaldiio.load_scp_sequential(str(out / "feats.scp")):
            count += x.shape[0]
            s1 += x.sum(0)
            s2 += (x.astype(np.float64) ** 2).sum(0)
        Path(a.cmvn_stats).parent.mkdir(parents=True, exist_ok=True)
        np.savez(a.cmvn_stats, count=np.array(count), sum=s1, sum_square=s2)
    dt = time.time() - t0
    print(f"{data} -> {out}: {len(shapes)} utterances, {frames / 100:.0f} s of audio in {dt:.1f} s "
          f"({frames / 100 / max(dt, 1e-9):.0f}x real time, {nj} jobs)", file=sys.stderr)
    done.write_text(fp + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
