"""Audio that yields useless features is refused: by the data-dir validation of stage 1
(egs2/kespeech_hdmole/asr1/local/data_dir.py) and by the feature extraction of stage 2
(local/compute_fbank.py), which also says why it redoes features with --overwrite true.

Tiny hand-made data dirs (a few 0.3 s WAV files) in a temporary directory.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

LOCAL = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"
sys.path.insert(0, str(LOCAL))
import compute_fbank  # noqa: E402
import data_dir  # noqa: E402

FS = 16000


def write_wav(path: Path, seed: int, frames: int = 4800, channels: int = 1, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.random.default_rng(seed).standard_normal((frames, channels)).astype(np.float32)
    soundfile.write(str(path), x if channels > 1 else x[:, 0], FS, subtype=subtype)
    return path


def make_dir(d: Path, wavs: dict, texts: dict = None) -> Path:
    """A Kaldi-style data dir; wavs: utterance -> path, each its own speaker, all Mandarin."""
    d.mkdir(parents=True, exist_ok=True)
    texts = texts or {u: "今天天气很好" for u in wavs}
    ids = sorted(wavs)
    for name, value in (("wav.scp", wavs), ("text", texts), ("utt2spk", {u: u for u in ids}),
                        ("spk2utt", {u: u for u in ids}), ("utt2accent", {u: "Mandarin" for u in ids})):
        (d / name).write_text("".join(f"{u} {value[u]}\n" for u in ids), encoding="utf-8")
    return d


@pytest.fixture
def wavs(tmp_path):
    return {f"u{k}": write_wav(tmp_path / "wav" / f"u{k}.wav", k) for k in (1, 2, 3)}


def fbank(*argv):
    """compute_fbank.main in-process; -> (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = compute_fbank.main([str(a) for a in argv])
    return rc, err.getvalue()


# --------------------------------------------------------------------------
# Stage 1: data_dir.validate (run on every data dir, demo corpus and KeSpeech)
# --------------------------------------------------------------------------
def test_validate_refuses_stereo(tmp_path, wavs):
    write_wav(wavs["u2"], 2, channels=2)
    d = make_dir(tmp_path / "data", wavs)
    with pytest.raises(data_dir.DataDirError,
                       match=rf"^{d}/wav.scp:2: utterance 'u2' \(\S+u2.wav\): the audio has 2 "
                             r"channels; expected mono \(1 channel\): convert it, e.g. sox in.wav "
                             r"-c 1 out.wav$"):
        data_dir.validate(d)


def test_validate_refuses_truncated_wav(tmp_path, wavs):
    write_wav(wavs["u3"], 3, frames=8000)
    with open(wavs["u3"], "r+b") as f:
        f.truncate(44 + 500 * 2)
    info = soundfile.info(str(wavs["u3"]))
    assert info.frames == 500  # libsndfile trusts the file size, not the header
    d = make_dir(tmp_path / "data", wavs)
    with pytest.raises(data_dir.DataDirError,
                       match=rf"^{d}/wav.scp:3: utterance 'u3' \(\S+\): truncated WAV file: its "
                             r"header declares 16000 bytes \(8000 frames\) of audio but the file "
                             r"holds only 1000 bytes \(500 frames\)"):
        data_dir.validate(d)
    # a WAV with extra chunks and an odd-sized one before 'data' is walked correctly
    with open(wavs["u3"], "wb") as f:
        pcm = (np.arange(4800, dtype=np.int16) % 100).tobytes()
        fmt = (b"fmt " + (16).to_bytes(4, "little") + (1).to_bytes(2, "little")
               + (1).to_bytes(2, "little") + FS.to_bytes(4, "little")
               + (2 * FS).to_bytes(4, "little") + (2).to_bytes(2, "little")
               + (16).to_bytes(2, "little"))
        junk = b"junk" + (3).to_bytes(4, "little") + b"abc\0"
        body = b"WAVE" + fmt + junk + b"data" + len(pcm).to_bytes(4, "little") + pcm
        f.write(b"RIFF" + len(body).to_bytes(4, "little") + body)
    assert data_dir.validate(d) == 3
    assert data_dir.riff_data_problem(wavs["u3"]) is None


def test_validate_refuses_a_transcript_longer_than_the_audio(tmp_path, wavs):
    # 0.3 s = 15 frames of 20 ms: 15 characters fit (spaces do not count), 16 do not
    texts = {"u1": "好" * 15, "u2": "今天 天气", "u3": "好" * 10 + " " + "好" * 6}
    d = make_dir(tmp_path / "data", wavs, texts)
    with pytest.raises(data_dir.DataDirError,
                       match=rf"^{d}/wav.scp:3: utterance 'u3' \(\S+\): the transcript has 16 "
                             r"characters but the audio lasts only 0.30 s, room for 15 \(expected "
                             r"at most one character per 20 ms\)"):
        data_dir.validate(d)


def test_validate_cli_reports_one_error_line(tmp_path, wavs):
    write_wav(wavs["u1"], 1, channels=2)
    d = make_dir(tmp_path / "data", wavs)
    res = subprocess.run([sys.executable, str(LOCAL / "data_dir.py"), str(d)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"ERROR: {d}/wav.scp:1: utterance 'u1' ({wavs['u1']}): the audio has 2 channels; expected "
        "mono (1 channel): convert it, e.g. sox in.wav -c 1 out.wav"]


# --------------------------------------------------------------------------
# Stage 2: compute_fbank.py
# --------------------------------------------------------------------------
def test_fbank_refuses_stereo(tmp_path, wavs):
    write_wav(wavs["u2"], 2, channels=2)
    d = make_dir(tmp_path / "data", wavs)
    rc, err = fbank(d, tmp_path / "dump", "--nj", 1)
    assert rc == 1
    assert err.splitlines() == [
        f"ERROR: {d}/wav.scp:2: utterance 'u2' ({wavs['u2']}): the audio has 2 channels; expected "
        "mono (1 channel): convert it, e.g. sox in.wav -c 1 out.wav"]
    assert not (tmp_path / "dump" / ".done").exists()
    # raw features (waveform encoders) too
    rc, err = fbank(d, tmp_path / "raw", "--feats_type", "raw")
    assert rc == 1 and f"{d}/wav.scp:2: utterance 'u2'" in err and "2 channels" in err


def test_fbank_refuses_nan_audio_with_one_error_line(tmp_path, wavs):
    x = 0.1 * np.random.default_rng(0).standard_normal(4800).astype(np.float32)
    x[[100, 2000]] = np.nan
    x[300] = np.inf
    soundfile.write(str(wavs["u2"]), x, FS, subtype="FLOAT")
    d = make_dir(tmp_path / "data", wavs)
    # in a subprocess, with a pool of 2 jobs: the error must come back as one line, no traceback
    for extra in ([], ["--feats_type", "raw"]):
        res = subprocess.run([sys.executable, str(LOCAL / "compute_fbank.py"), str(d),
                              str(tmp_path / f"dump{len(extra)}"), "--nj", "2", *extra],
                             capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert res.returncode == 1, res.stderr
        assert res.stderr.splitlines() == [
            f"ERROR: {d}/wav.scp:2: utterance 'u2' ({wavs['u2']}): the audio has 3 of 4800 "
            "samples that are NaN or infinite; expected finite samples (the file is corrupt or "
            "was written from broken data)"], res.stderr


def test_fbank_says_why_it_redoes_features(tmp_path, wavs):
    d = make_dir(tmp_path / "data", wavs)
    out = tmp_path / "dump"
    assert fbank(d, out, "--nj", 1)[0] == 0
    done = json.loads((out / ".done").read_text())
    assert set(done) == {"wav.scp", "text", "utt2accent", "settings"}
    assert done["settings"] == {"num_mel_bins": 80, "fs": FS, "feats_type": "fbank"}
    rc, err = fbank(d, out, "--nj", 1, "--overwrite", "true")
    assert rc == 0 and err.strip() == f"{out}: features are up to date, skipped"

    (d / "text").write_text("u1 今天\nu2 天气\nu3 很好\n", encoding="utf-8")
    rc, err = fbank(d, out, "--nj", 1)
    assert rc == 1 and err.strip() == (
        f"ERROR: {out} holds features of other data or settings ({d}/text changed since the "
        "features were made); remove it or pass --overwrite true")
    rc, err = fbank(d, out, "--nj", 1, "--overwrite", "true")
    assert rc == 0
    assert err.splitlines()[0] == f"{out}: {d}/text changed since the features were made: redone"
    assert (out / "text").read_text(encoding="utf-8").startswith("u1 今天\n")

    (d / "wav.scp").write_text((d / "wav.scp").read_text().replace("u3.wav", "u1.wav"))
    (d / "utt2accent").write_text("u1 Mandarin\nu2 Mandarin\nu3 Beijing\n")
    rc, err = fbank(d, out, "--nj", 1, "--num_mel_bins", 40, "--overwrite", "true")
    assert rc == 0
    assert err.splitlines()[0] == (
        f"{out}: {d}/wav.scp, {d}/utt2accent changed since the features were made; the settings "
        "changed since the features were made (num_mel_bins 80 -> 40): redone")

    (out / ".done").write_text("0123abcd" * 8 + "\n")  # the format of older versions
    rc, err = fbank(d, out, "--nj", 1, "--num_mel_bins", 40)
    assert rc == 1 and "made by an older version of compute_fbank.py" in err
    rc, err = fbank(d, out, "--nj", 1, "--num_mel_bins", 40, "--overwrite", "true")
    assert rc == 0 and err.splitlines()[0] == (
        f"{out}: the features were made by an older version of compute_fbank.py (no per-input "
        "record in .done): redone")
    assert "skipped" not in err  # the recipe greps the log for 'skipped'
    assert fbank(d, out, "--nj", 1, "--num_mel_bins", 40)[1].strip().endswith("skipped")


def test_pitch_features_follow_a_glide_and_mark_noise_unvoiced():
    """A harmonic tone gliding from 120 to 240 Hz: voiced, log F0 rises by log 2, the slope is
    positive; white noise: unvoiced (low autocorrelation peak)."""
    t = np.arange(int(1.0 * FS)) / FS
    f0 = 120.0 * 2.0 ** t  # 120 -> 240 Hz over one second
    phase = 2 * np.pi * np.cumsum(f0) / FS
    x = sum(np.sin(k * phase) / k for k in range(1, 6)).astype(np.float32)
    n = (len(x) - 400) // 160 + 1
    p = compute_fbank.speech_features.pitch_features(x, FS, n)
    assert p.shape == (n, 3)
    inner = slice(10, n - 10)
    assert (p[inner, 0] > 0.8).all()
    rise = p[n - 15, 1] - p[15, 1]
    assert abs(rise - np.log(2.0) * (n - 30) / n) < 0.08
    assert (p[inner, 2] > 0).mean() > 0.9
    assert abs(p[:, 1].mean()) < 1e-5  # relative to the utterance's mean
    noise = np.random.default_rng(0).standard_normal(FS).astype(np.float32)
    assert np.median(compute_fbank.speech_features.pitch_features(noise, FS, n)[:, 0]) < 0.6


def test_fbank_pitch_writes_83_dims_and_their_cmvn_stats(tmp_path, wavs):
    import kaldiio

    d = make_dir(tmp_path / "d", wavs)
    out = tmp_path / "fbank_pitch"
    rc, err = fbank(d, out, "--nj", 1, "--feats_type", "fbank_pitch", "--cmvn_stats", tmp_path / "cmvn.npz")
    assert rc == 0, err
    feats = dict(kaldiio.load_scp(str(out / "feats.scp")))
    assert {x.shape[1] for x in feats.values()} == {83}
    assert np.load(tmp_path / "cmvn.npz")["sum"].shape == (83,)
    assert all(line.split()[1].endswith(",83") for line in (out / "speech_shape").read_text().splitlines())
