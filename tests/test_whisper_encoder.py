"""Tests of WhisperSpeechEncoder on a tiny, randomly initialised Whisper saved to tmp_path."""
import json
import os

import numpy as np
import pytest
import torch
from transformers import (
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from espnet_hdmole.asr.whisper_encoder import WhisperLogMel, WhisperSpeechEncoder
from tiny import MAX_POS, make_whisper_dir, tiny_whisper_config as tiny_config

SR = 16000
MAX_SAMPLES = 2 * MAX_POS * 160


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return make_whisper_dir(tmp_path_factory.mktemp("whisper_model"))


@pytest.fixture(scope="module")
def encoder(whisper_dir):
    return WhisperSpeechEncoder(input_size=1, whisper_dir=whisper_dir)


@pytest.fixture(scope="module")
def reference_encoder(whisper_dir):
    """The HF encoder with the same weights, loaded by transformers itself."""
    return WhisperModel.from_pretrained(whisper_dir).encoder.eval()


def reference_features(wave: torch.Tensor, num_mel_bins: int = 80, chunk_length: int = 2) -> torch.Tensor:
    fe = WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=chunk_length)
    return fe(wave.numpy(), sampling_rate=SR, return_tensors="pt").input_features  # (1, n_mels, frames)


def batch(waves):
    lens = torch.tensor([len(w) for w in waves])
    xs = torch.zeros(len(waves), int(lens.max()))
    for i, w in enumerate(waves):
        xs[i, : len(w)] = w
    return xs, lens


def test_shapes_lengths_and_batch_independence(encoder):
    g = torch.Generator().manual_seed(1)
    short = 0.1 * torch.randn(int(0.7 * SR), generator=g)  # 11200 samples -> 70 frames -> 35
    long = 0.1 * torch.randn(int(1.3 * SR), generator=g)  # 20800 samples -> 130 frames -> 65
    xs, ilens = batch([short, long])
    xs[0, len(short):] = 5.0 * torch.randn(len(long) - len(short), generator=g)  # garbage padding

    out, olens, states = encoder(xs, ilens)
    assert states is None
    assert encoder.output_size() == 32
    assert out.shape == (2, 65, 32)
    assert olens.tolist() == [35, 65]
    assert torch.all(out[0, 35:] == 0)  # padded positions are zeroed
    assert out[0, :35].abs().sum() > 0

    alone0, olen0, _ = encoder(short[None], torch.tensor([len(short)]))
    alone1, olen1, _ = encoder(long[None], torch.tensor([len(long)]))
    assert olen0.tolist() == [35] and olen1.tolist() == [65]
    assert alone0.shape == (1, 35, 32)
    torch.testing.assert_close(out[0, :35], alone0[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], alone1[0], atol=1e-5, rtol=0)
    # ... and the garbage would have changed it, had it not been masked out.
    noisy, _, _ = encoder(xs[:1], torch.tensor([xs.size(1)]))
    assert not torch.allclose(noisy[0, :35], alone0[0], atol=1e-3)


@pytest.mark.parametrize("n", [1, 159, 160, 161, 11201, MAX_SAMPLES - 1, MAX_SAMPLES])
def test_lengths_follow_feature_extractor_mask(encoder, n):
    """Valid mel frames = the frames WhisperFeatureExtractor's attention mask marks as valid."""
    fe = WhisperFeatureExtractor(feature_size=80, chunk_length=2)
    mask = fe(np.zeros(n, dtype=np.float32), sampling_rate=SR, return_attention_mask=True).attention_mask
    frames = int(np.asarray(mask).sum())
    out, olens, _ = encoder(torch.zeros(1, n), torch.tensor([n]))
    assert olens.item() == (frames + 1) // 2
    assert out.shape[1] == olens.item()


def test_matches_hf_encoder_on_padded_features(encoder, reference_encoder):
    g = torch.Generator().manual_seed(2)
    waves = [0.1 * torch.randn(int(0.7 * SR), generator=g), 0.1 * torch.randn(int(1.3 * SR) + 37, generator=g)]
    xs, ilens = batch(waves)
    out, olens, _ = encoder(xs, ilens)
    for i, w in enumerate(waves):
        feats = reference_features(w)  # padded to the full 2 s, as Whisper does
        assert feats.shape == (1, 80, 2 * MAX_POS)
        with torch.no_grad():
            ref = reference_encoder(feats).last_hidden_state
        n = int(olens[i])
        torch.testing.assert_close(out[i, :n], ref[0, :n], atol=1e-4, rtol=0)


def test_loads_other_checkpoint_layouts(tmp_path, encoder, whisper_dir):
    """Same encoder weights from a WhisperForConditionalGeneration, a bare WhisperEncoder,
    a sharded safetensors checkpoint and a pytorch_model.bin give the same outputs."""
    full = WhisperModel.from_pretrained(whisper_dir)
    enc_state = full.encoder.state_dict()
    x = 0.1 * torch.randn(1, 12345)
    ilens = torch.tensor([12345])
    expected, _, _ = encoder(x, ilens)

    gen = WhisperForConditionalGeneration(full.config)
    gen.model.load_state_dict(full.state_dict())
    gen.save_pretrained(str(tmp_path / "gen"))
    bare = WhisperEncoder(full.config)
    bare.load_state_dict(enc_state)
    bare.save_pretrained(str(tmp_path / "bare"))
    full.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "sharded" / "model.safetensors.index.json")
    (tmp_path / "bin").mkdir()
    full.config.save_pretrained(str(tmp_path / "bin"))
    torch.save({k: v.clone() for k, v in full.state_dict().items()}, str(tmp_path / "bin" / "pytorch_model.bin"))

    for name in ["gen", "bare", "sharded", "bin"]:
        other = WhisperSpeechEncoder(1, str(tmp_path / name))
        got, _, _ = other(x, ilens)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0, msg=name)
        # Decoder weights are not kept.
        assert not any("decoder" in k for k in other.state_dict()), name
        assert sum(p.numel() for p in other.parameters()) == sum(p.numel() for p in bare.parameters())


def test_features_match_feature_extractor(encoder):
    g = torch.Generator().manual_seed(3)
    waves = [0.2 * torch.randn(int(0.7 * SR) + 5, generator=g), 0.05 * torch.randn(int(1.9 * SR), generator=g)]
    xs, ilens = batch(waves)
    feats, frames = encoder.frontend(xs, ilens)
    assert feats.shape == (2, 80, 2 * MAX_POS)
    for i, w in enumerate(waves):
        ref = reference_features(w)[0]
        # The utterances differ in loudness, so a batch-wide maximum would fail this for one.
        torch.testing.assert_close(feats[i], ref, atol=1e-3, rtol=0)
    assert frames.tolist() == [71, 190]


def test_features_full_30s_128_mels():
    """The 30-s, 128-bin setting of whisper-large-v3, on a 3.5-s waveform."""
    logmel = WhisperLogMel(num_mel_bins=128, num_frames=3000)
    wave = 0.1 * torch.randn(int(3.5 * SR))
    feats, frames = logmel(wave[None], torch.tensor([len(wave)]))
    assert feats.shape == (1, 128, 3000)
    assert frames.tolist() == [350]
    ref = reference_features(wave, num_mel_bins=128, chunk_length=30)
    torch.testing.assert_close(feats, ref, atol=1e-3, rtol=0)


def test_frozen_no_grad_and_stays_in_eval(whisper_dir, encoder):
    assert all(not p.requires_grad for p in encoder.parameters())
    parent = torch.nn.ModuleDict({"encoder": encoder, "head": torch.nn.Linear(32, 4)})
    parent.train()
    assert parent["head"].training
    assert not encoder.training
    assert not any(m.training for m in encoder.modules())
    x = 0.1 * torch.randn(2, 8000)
    ilens = torch.tensor([8000, 6000])
    grad_mode = []
    hook = encoder.encoder.layers[0].register_forward_pre_hook(lambda m, a: grad_mode.append(torch.is_grad_enabled()))
    try:
        with torch.enable_grad():
            out1, _, _ = encoder(x, ilens)
            out2, _, _ = encoder(x, ilens)
    finally:
        hook.remove()
    assert grad_mode == [False, False]  # the encoder ran under no_grad
    assert not out1.requires_grad and out1.grad_fn is None
    torch.testing.assert_close(out1, out2, atol=0, rtol=0)  # dropout 0.3 would make these differ

    # Control: an unfrozen encoder trains and gets gradients.
    trainable = WhisperSpeechEncoder(1, whisper_dir, freeze=False)
    torch.nn.ModuleDict({"encoder": trainable}).train()
    assert trainable.encoder.training
    # As in transformers, the (sinusoidal) position table is never trained.
    assert all(p.requires_grad != ("embed_positions" in n) for n, p in trainable.encoder.named_parameters())
    hook = trainable.encoder.layers[0].register_forward_pre_hook(lambda m, a: grad_mode.append(torch.is_grad_enabled()))
    out3, _, _ = trainable(x, ilens)
    hook.remove()
    assert grad_mode[-1] is True
    assert out3.requires_grad
    out3.sum().backward()
    assert trainable.encoder.conv1.weight.grad is not None
    out4, _, _ = trainable(x, ilens)
    assert not torch.allclose(out3, out4)  # dropout active in train mode
    trainable.eval()
    torch.testing.assert_close(trainable(x, ilens)[0], out1, atol=1e-5, rtol=0)


def test_missing_directory(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"nope' does not exist"):
        WhisperSpeechEncoder(1, missing)


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        WhisperSpeechEncoder(1, str(tmp_path))


def test_directory_without_weights(tmp_path):
    tiny_config().save_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"has no model weights.*model\.safetensors"):
        WhisperSpeechEncoder(1, str(tmp_path))


def test_weights_without_encoder(tmp_path, whisper_dir):
    from safetensors.torch import save_file

    full = WhisperModel.from_pretrained(whisper_dir)
    tiny_config().save_pretrained(str(tmp_path))
    decoder_only = {k: v.contiguous() for k, v in full.state_dict().items() if k.startswith("decoder.")}
    save_file(decoder_only, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"do not cover the Whisper encoder.*conv1\.weight"):
        WhisperSpeechEncoder(1, str(tmp_path))

    # One encoder tensor short is also an error (no silent random init).
    partial = {k: v.contiguous() for k, v in full.state_dict().items() if k != "encoder.layer_norm.weight"}
    save_file(partial, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"1 of \d+ encoder tensors are missing.*layer_norm\.weight"):
        WhisperSpeechEncoder(1, str(tmp_path))


def test_too_long_input(encoder):
    x = torch.zeros(1, MAX_SAMPLES + 1)
    with pytest.raises(ValueError, match=r"longer than the maximum 32000 samples \(2\.00 s\)"):
        encoder(x, torch.tensor([MAX_SAMPLES + 1]))
    # A padded batch longer than the maximum is fine as long as every utterance fits.
    out, olens, _ = encoder(torch.zeros(2, MAX_SAMPLES + 500), torch.tensor([MAX_SAMPLES, 100]))
    assert olens.tolist() == [MAX_POS, 1]
    assert out.shape == (2, MAX_POS, 32)


def test_rejects_other_sampling_rate(whisper_dir):
    with pytest.raises(ValueError, match=r"16000 Hz.*sampling_rate=8000"):
        WhisperSpeechEncoder(1, whisper_dir, sampling_rate=8000)
