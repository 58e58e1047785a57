"""The demo corpus's channel: one distribution of reverberation, phone band and noise, drawn
per utterance, and its application to a 16-kHz signal."""

from __future__ import annotations

from typing import Optional

import numpy as np


FS = 16000


def draw_channel(rng: np.random.Generator) -> dict:
    """The channel of one utterance (every set but the clean source_test): reverberation half
    the time, the phone band half the time, noise at 15-35 dB SNR four times in five."""
    return {
        "rt60": float(rng.uniform(0.15, 0.5)) if rng.random() < 0.5 else None,
        "drr_db": float(rng.uniform(3, 12)),
        "phone": bool(rng.random() < 0.5),
        "snr_db": float(rng.uniform(15, 35)) if rng.random() < 0.8 else None,
        "noise": str(rng.choice(["white", "pink", "brown"])),
    }


def apply_channel(x: np.ndarray, ch: Optional[dict], rng: np.random.Generator) -> np.ndarray:
    """16 kHz float signal -> with reverberation, phone band and noise as ``ch`` says."""
    from scipy.signal import butter, fftconvolve, sosfilt

    if ch is None:
        return x
    if ch.get("rt60"):
        rt60 = ch["rt60"]
        n = int(rt60 * FS)
        t = np.arange(n) / FS
        h = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # diffuse tail ...
        h *= np.sqrt(10 ** (-ch["drr_db"] / 10) / np.sum(h ** 2))  # ... drr_db below ...
        h[0] += 1.0  # ... the direct sound
        x = fftconvolve(x, h)[: len(x) + n // 4]
    if ch.get("phone"):
        x = sosfilt(butter(4, [300, 3400], btype="bandpass", fs=FS, output="sos"), x)
    if ch.get("snr_db") is not None:
        noise = rng.standard_normal(len(x))
        if ch["noise"] in ("pink", "brown"):
            spec = np.fft.rfft(noise)
            f = np.maximum(np.fft.rfftfreq(len(x), 1 / FS), 20.0)
            spec /= f ** (0.5 if ch["noise"] == "pink" else 1.0)
            noise = np.fft.irfft(spec, len(x))
        active = x[np.abs(x) > 0.05 * np.max(np.abs(x))]
        p_speech = np.mean(active ** 2) if active.size else np.mean(x ** 2)
        noise *= np.sqrt(p_speech / (np.mean(noise ** 2) + 1e-12) / 10 ** (ch["snr_db"] / 10))
        x = x + noise
    return x
