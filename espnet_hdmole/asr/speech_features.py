"""Speech features of the demo's conformer encoder: 80-dim log-mel filterbanks (kaldi-native-fbank)
plus 3 pitch features per 10-ms frame. Stage 2 of the recipe (local/compute_fbank.py) writes them
for whole data sets; a packed system (espnet_hdmole.system_archive) computes them for one waveform.
Only numpy, scipy and kaldi-native-fbank are imported, so that the recipe's data scripts can load
this file without the package (egs2/.../local/package_modules.py).
"""
import numpy as np


def resample(wav: np.ndarray, sr: int, fs: int) -> np.ndarray:
    """A waveform at ``sr`` Hz brought to ``fs`` Hz (polyphase filtering; unchanged when equal)."""
    if sr == fs:
        return wav
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(sr, fs)
    return resample_poly(wav, fs // g, sr // g).astype(np.float32)


def fbank_features(wav: np.ndarray, sr: int, fs: int = 16000, num_mel_bins: int = 80, pitch: bool = False) -> np.ndarray:
    """(frames, num_mel_bins [+ 3]) features of a mono waveform (float samples in [-1, 1]) at ``sr``
    Hz, resampled to ``fs`` first when they differ; 25-ms frames every 10 ms, no dither."""
    import kaldi_native_fbank as knf

    wav = resample(np.asarray(wav, dtype=np.float32), sr, fs)
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = fs
    opts.mel_opts.num_bins = num_mel_bins
    f = knf.OnlineFbank(opts)
    f.accept_waveform(fs, (wav * 32768.0).tolist())
    f.input_finished()
    if f.num_frames_ready == 0:
        raise ValueError("the audio is shorter than one frame")
    feats = np.stack([f.get_frame(i) for i in range(f.num_frames_ready)]).astype(np.float32)
    if pitch:
        feats = np.concatenate([feats, pitch_features(wav, fs, feats.shape[0])], 1)
    return feats


def pitch_features(wav: np.ndarray, fs: int, n_frames: int, fmin: float = 60.0, fmax: float = 400.0) -> np.ndarray:
    """(n_frames, 3): voicing strength, log F0 minus its voiced mean, and its slope per frame.

    F0 is the lag of the highest normalised autocorrelation (40-ms Hann window centred on each
    25-ms fbank frame, corrected for the window's own autocorrelation) between 1/fmax and 1/fmin;
    a lag whose half scores almost as high is halved (octave errors). The voicing strength is that
    peak; frames under 0.6 count as unvoiced, and their log F0 is interpolated from the voiced ones.
    """
    from scipy.signal import medfilt

    from scipy import fft

    shift, win = fs // 100, int(0.04 * fs)
    lead = (win - int(0.025 * fs)) // 2
    lo, hi = int(fs / fmax), int(fs / fmin)
    x = np.concatenate([np.zeros(lead, np.float32), wav.astype(np.float32), np.zeros(win, np.float32)])
    idx = np.arange(n_frames)[:, None] * shift + np.arange(win)[None]
    hann = np.hanning(win).astype(np.float32)
    frames = x[idx]
    frames = (frames - frames.mean(1, keepdims=True)) * hann
    nfft = fft.next_fast_len(win + hi + 1)  # long enough that lags up to 1/fmin do not wrap around
    acf = fft.irfft(np.abs(fft.rfft(frames, nfft)) ** 2, nfft)[:, : hi + 1]
    wacf = fft.irfft(np.abs(fft.rfft(hann, nfft)) ** 2, nfft)[: hi + 1]
    acf = acf / np.maximum(acf[:, :1], 1e-10) / np.maximum(wacf / wacf[0], 1e-3)
    rows = np.arange(n_frames)
    lag = lo + acf[:, lo:hi].argmax(1)
    for _ in range(2):
        half = lag // 2
        better = (half >= lo) & (acf[rows, half] >= 0.85 * acf[rows, lag])
        lag = np.where(better, half, lag)
    peak = np.clip(acf[rows, lag], 0.0, 1.0)
    voiced = peak >= 0.6
    logf0 = np.log(fs / lag)
    if voiced.sum() >= 2:
        logf0 = np.interp(rows, rows[voiced], medfilt(logf0, 5)[voiced])
        logf0 = logf0 - logf0[voiced].mean()
    else:
        logf0 = np.zeros(n_frames)
    return np.stack([peak, logf0, np.gradient(logf0) * 10.0], 1).astype(np.float32)
