"""A frozen Whisper encoder (Hugging Face ``transformers``) as an ESPnet encoder.

``WhisperSpeechEncoder`` takes raw 16 kHz waveforms, computes Whisper's log-mel features in
torch, runs the encoder of a Whisper checkpoint read from a local directory and returns the
encoder frames of the valid part of every utterance.

Where the weights come from: ``whisper_dir`` is a local directory as written by
``save_pretrained`` (or a Hugging Face snapshot of e.g. ``openai/whisper-small`` copied there by
hand). It must hold ``config.json`` (read with ``WhisperConfig.from_pretrained(...,
local_files_only=True)``) and the weights as ``model.safetensors``, a sharded
``model.safetensors.index.json``, ``pytorch_model.bin`` or a sharded
``pytorch_model.bin.index.json``. The checkpoint may be a ``WhisperForConditionalGeneration``
(keys ``model.encoder.*``), a ``WhisperModel`` (keys ``encoder.*``) or a bare ``WhisperEncoder``
(keys without a prefix). Only the encoder tensors are read; decoder tensors are never loaded.
Nothing is downloaded and nothing is initialised at random: a missing directory, config or
encoder tensor is an error.

Padding: Whisper's encoder only works on exactly 30 s of audio (``2 * max_source_positions``
mel frames of 10 ms). Each utterance is therefore cut to its length ``ilens[b]`` (samples past
it are set to zero, so the padding of a batch does not matter), zero-padded to 30 s as Whisper
does, turned into log-mel features, and encoded; the output is then cut back to
``ceil(frames / 2)`` frames, ``frames = ceil(ilens[b] / 160)`` being the number of mel frames
whose centre lies inside the utterance (the convention of ``WhisperFeatureExtractor``'s
attention mask). Positions past an utterance's length in the padded output are zero. Inputs
longer than 30 s (``2 * max_source_positions * 160`` samples) raise a ``ValueError``.
"""
import json
import math
import os
from typing import Dict, List, Optional, Tuple

import torch

from espnet2.asr.encoder.abs_encoder import AbsEncoder

N_FFT = 400
HOP_LENGTH = 160
WHISPER_SAMPLING_RATE = 16000

# (index file, single file) for each supported serialisation, in order of preference.
_WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
# Key prefixes of the encoder in WhisperForConditionalGeneration, WhisperModel, WhisperEncoder.
_ENCODER_PREFIXES = ("model.encoder.", "encoder.", "")


class WhisperLogMel(torch.nn.Module):
    """Whisper's log-mel spectrogram in torch, on waveforms zero-padded to a fixed length.

    Per utterance: zero-pad the waveform to ``num_samples``; STFT (n_fft 400, hop 160, periodic
    Hann window, centred with reflect padding) dropping the last frame; power spectrum; Slaney
    mel filter bank (0-8000 Hz, Slaney normalisation); ``log10(max(mel, 1e-10))``; then
    ``max(x, x.max() - 8)`` with the maximum taken over that utterance; then ``(x + 4) / 4``.

    Args:
        num_mel_bins: number of mel filters (80, or 128 for whisper-large-v3).
        num_frames: number of mel frames of the padded waveform (3000 for 30 s);
            the waveform is padded to ``num_frames * 160`` samples.
        sampling_rate: must be 16000.
    """

    def __init__(self, num_mel_bins: int, num_frames: int, sampling_rate: int = WHISPER_SAMPLING_RATE):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        if sampling_rate != WHISPER_SAMPLING_RATE:
            raise ValueError(
                f"Whisper works on {WHISPER_SAMPLING_RATE} Hz audio, got sampling_rate={sampling_rate}; "
                "resample the data first"
            )
        self.num_mel_bins = num_mel_bins
        self.num_frames = num_frames
        self.num_samples = num_frames * HOP_LENGTH
        self.sampling_rate = sampling_rate
        filters = mel_filter_bank(
            num_frequency_bins=N_FFT // 2 + 1,
            num_mel_filters=num_mel_bins,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (n_freq, n_mels)
        # Not persistent: derived from the config, so kept out of checkpoints.
        self.register_buffer(
            "mel_filters", torch.as_tensor(filters, dtype=torch.float32).t().contiguous(), persistent=False
        )
        self.register_buffer("window", torch.hann_window(N_FFT, dtype=torch.float32), persistent=False)

    @staticmethod
    def valid_frames(ilens: torch.Tensor) -> torch.Tensor:
        """Number of mel frames whose centre lies inside an utterance of ``ilens`` samples."""
        return torch.div(ilens + HOP_LENGTH - 1, HOP_LENGTH, rounding_mode="floor")

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, samples), (B,) -> features (B, num_mel_bins, num_frames), valid frames (B,).

        Raises ValueError if an utterance is longer than ``num_samples``.
        """
        if xs_pad.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(xs_pad.shape)}")
        ilens = ilens.to(device=xs_pad.device, dtype=torch.long)
        ilens = torch.clamp(ilens, max=xs_pad.size(1))
        longest = int(ilens.max()) if ilens.numel() > 0 else 0
        if longest > self.num_samples:
            raise ValueError(
                f"input of {longest} samples ({longest / self.sampling_rate:.2f} s) is longer than the "
                f"maximum {self.num_samples} samples ({self.num_samples / self.sampling_rate:.2f} s) that "
                "the Whisper encoder accepts; split the audio into shorter segments"
            )
        x = xs_pad[:, : self.num_samples].to(torch.float32)
        keep = torch.arange(x.size(1), device=x.device)[None, :] < ilens[:, None]
        x = x.masked_fill(~keep, 0.0)
        x = torch.nn.functional.pad(x, (0, self.num_samples - x.size(1)))
        spec = torch.stft(
            x,
            N_FFT,
            HOP_LENGTH,
            window=self.window.to(torch.float32),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # (B, n_freq, num_frames + 1)
        power = spec[..., :-1].abs().pow(2)
        mel = torch.matmul(self.mel_filters.to(torch.float32), power)  # (B, n_mels, num_frames)
        logmel = torch.clamp(mel, min=1e-10).log10()
        peak = logmel.amax(dim=(1, 2), keepdim=True)
        logmel = torch.maximum(logmel, peak - 8.0)
        logmel = (logmel + 4.0) / 4.0
        return logmel, self.valid_frames(ilens)


def _read_encoder_state_dict(whisper_dir: str, expected: List[str]) -> Dict[str, torch.Tensor]:
    """Read the encoder tensors named ``expected`` (WhisperEncoder keys) from ``whisper_dir``.

    Only tensors whose key is ``prefix + k`` for one of ``_ENCODER_PREFIXES`` are read.
    """
    # Map every stored key to the file holding it.
    key_to_file: Dict[str, str] = {}
    found = None
    for index_name, single_name in _WEIGHT_FILES:
        index_path = os.path.join(whisper_dir, index_name)
        single_path = os.path.join(whisper_dir, single_name)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map", {})
            key_to_file = {k: os.path.join(whisper_dir, v) for k, v in weight_map.items()}
            found = index_name
            break
        if os.path.isfile(single_path):
            key_to_file = {k: single_path for k in _list_keys(single_path)}
            found = single_name
            break
    if found is None:
        wanted = ", ".join(name for pair in _WEIGHT_FILES for name in pair)
        raise FileNotFoundError(
            f"Whisper directory '{whisper_dir}' has no model weights: expected one of {wanted}"
        )

    # Pick the prefix under which the stored keys cover the whole encoder.
    prefix = None
    best_missing: Optional[List[str]] = None
    for p in _ENCODER_PREFIXES:
        missing = [k for k in expected if p + k not in key_to_file]
        if not missing:
            prefix = p
            break
        if best_missing is None or len(missing) < len(best_missing):
            best_missing = missing
    if prefix is None:
        shown = ", ".join(best_missing[:5]) + (", ..." if len(best_missing) > 5 else "")
        raise ValueError(
            f"The weights in Whisper directory '{whisper_dir}' ({found}) do not cover the Whisper encoder: "
            f"{len(best_missing)} of {len(expected)} encoder tensors are missing under every key prefix "
            f"{[p or '<none>' for p in _ENCODER_PREFIXES]} (e.g. {shown})"
        )

    # Read only the needed tensors, file by file.
    by_file: Dict[str, List[str]] = {}
    for k in expected:
        by_file.setdefault(key_to_file[prefix + k], []).append(k)
    state: Dict[str, torch.Tensor] = {}
    for path, keys in by_file.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Whisper directory '{whisper_dir}': weight shard '{path}' is missing")
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                for k in keys:
                    state[k] = f.get_tensor(prefix + k)
        else:
            stored = _torch_load(path)
            for k in keys:
                state[k] = stored[prefix + k]
            del stored  # drops the decoder tensors
    return state


def _list_keys(path: str) -> List[str]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            return list(f.keys())
    return list(_torch_load(path).keys())


def _torch_load(path: str) -> Dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


class WhisperSpeechEncoder(AbsEncoder):
    """The encoder of a Whisper model (``transformers``), loaded from a local directory.

    Input: raw 16 kHz waveforms ``xs_pad`` (B, samples) with lengths ``ilens`` (B,).
    Output: ``(out (B, T', d_model), olens (B,), None)`` with
    ``olens = ceil(ceil(ilens / 160) / 2)`` (one frame per 20 ms); ``out`` is zero past
    ``olens``.

    Weights: ``whisper_dir`` must hold ``config.json`` and the weights (``model.safetensors``,
    sharded safetensors, or ``pytorch_model.bin``) of a ``WhisperForConditionalGeneration``,
    ``WhisperModel`` or bare ``WhisperEncoder``; only the encoder tensors are read, nothing is
    downloaded and nothing is initialised at random (a missing directory, ``config.json``,
    weight file or encoder tensor raises ``FileNotFoundError``/``ValueError``). The weights are
    kept in float32 (cast the module afterwards for half precision).

    30-s padding: the Whisper encoder only accepts exactly ``2 * max_source_positions`` mel
    frames (30 s). Every utterance is zero-padded to that length on its own (samples past its
    ``ilens`` are ignored), encoded, and the output cut back to its valid frames. Utterances
    longer than 30 s raise ``ValueError``.

    Args:
        input_size: ignored (ESPnet passes the frontend's output size; there is no frontend).
        whisper_dir: local directory of the Whisper checkpoint.
        freeze: if True (default) the parameters do not require grad, the encoder runs under
            ``torch.no_grad()`` and stays in eval mode even when ``.train()`` is called.
        sampling_rate: sampling rate of the input; must be 16000.
    """

    def __init__(self, input_size: int, whisper_dir: str, freeze: bool = True, sampling_rate: int = 16000):
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        whisper_dir = os.fspath(whisper_dir)
        if not os.path.isdir(whisper_dir):
            raise FileNotFoundError(f"Whisper directory '{whisper_dir}' does not exist")
        if not os.path.isfile(os.path.join(whisper_dir, "config.json")):
            raise FileNotFoundError(f"Whisper directory '{whisper_dir}' has no config.json")
        config = WhisperConfig.from_pretrained(whisper_dir, local_files_only=True)

        # Build the module without allocating random weights, then assign the checkpoint's.
        with torch.device("meta"):
            encoder = WhisperEncoder(config)
        expected = list(encoder.state_dict().keys())
        state = _read_encoder_state_dict(whisper_dir, expected)
        dtype = torch.get_default_dtype()
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        encoder.load_state_dict(state, strict=True, assign=True)
        leftovers = [n for n, t in list(encoder.named_parameters()) + list(encoder.named_buffers()) if t.is_meta]
        if leftovers:  # cannot happen with strict=True, but never run on uninitialised tensors
            raise ValueError(f"Whisper directory '{whisper_dir}': encoder tensors not loaded: {leftovers}")

        self.whisper_dir = whisper_dir
        self.freeze = freeze
        self.config = config
        self.max_frames = 2 * config.max_source_positions
        self.max_samples = self.max_frames * HOP_LENGTH
        self.frontend = WhisperLogMel(config.num_mel_bins, self.max_frames, sampling_rate)
        self.encoder = encoder
        if freeze:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def output_size(self) -> int:
        return self.config.d_model

    def train(self, mode: bool = True) -> "WhisperSpeechEncoder":
        """Set train/eval mode; a frozen encoder stays in eval mode."""
        return super().train(mode and not self.freeze)

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: torch.Tensor = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        with torch.no_grad():
            feats, frames = self.frontend(xs_pad, ilens)
        param = next(self.encoder.parameters())
        feats = feats.to(dtype=param.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            hidden = self.encoder(input_features=feats).last_hidden_state  # (B, max_source_positions, d)
        olens = torch.div(frames + 1, 2, rounding_mode="floor")
        t_max = int(olens.max()) if olens.numel() > 0 else 0
        out = hidden[:, :t_max]
        valid = torch.arange(t_max, device=out.device)[None, :] < olens[:, None]
        out = out.masked_fill(~valid[..., None], 0.0)
        return out, olens, None
