"""The Whisper converter (tools/whisper_ct2_to_hf.py) and WhisperSpeechEncoder on real Whisper weights.

The first tests run everywhere: they write small CTranslate2-format files with a writer of
their own and read or convert them. The real-weight tests run only where Whisper base is
installed (``bash tools/install_whisper.sh base`` -> tools/whisper-base, or a directory named
by HDMOLE_WHISPER_DIR); they compare the project's encoder, on raw audio, with reference
encoders fed with transformers' WhisperFeatureExtractor features:
- transformers' own WhisperModel encoder loaded from the converted directory, and
- CTranslate2's Whisper encoder on the original model in DIR/ctranslate2, where the
  ``ctranslate2`` package can be imported (it is not a dependency of the project).
Tolerance: max abs difference over the valid output frames <= MAX_ABS_DIFF (outputs reach
about 25 in magnitude) and mean abs difference <= MEAN_ABS_DIFF.
"""
import importlib.util
import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000
MAX_ABS_DIFF = 2e-3
MEAN_ABS_DIFF = 1e-4
INSTALL_HINT = "run `bash tools/install_whisper.sh base` (or set HDMOLE_WHISPER_DIR to a converted Whisper directory)"


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ct2_to_hf = _load_tool("whisper_ct2_to_hf")

# ---------------------------------------------------------------- the model.bin reader, no download

_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}


def write_ct2_model(path, variables, aliases=None, version=6, spec="WhisperSpec", revision=3):
    """A CTranslate2 model.bin as the converter's docstring describes it (bfloat16: pass ('bf16', array))."""

    def string(s):
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", version), string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        if isinstance(value, tuple):  # bfloat16: the top 16 bits of float32
            value = np.asarray(value[1], dtype=np.float32)
            code, data = 5, (value.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        else:
            value = np.asarray(value)
            code, data = _DTYPE_CODES[value.dtype], value.tobytes()
        out += [string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape)]
        out += [struct.pack("<B", code), struct.pack("<I", len(data)), data]
    out.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        out += [string(alias), string(target)]
    with open(path, "wb") as f:
        f.write(b"".join(out))


def test_reader_reads_what_the_format_says(tmp_path):
    rng = np.random.default_rng(0)
    w16 = rng.standard_normal((3, 4)).astype(np.float16)
    w32 = rng.standard_normal((2, 5, 3)).astype(np.float32)
    bf = np.array([1.0, -2.5, 3.0], dtype=np.float32)  # exact in bfloat16
    path = str(tmp_path / "model.bin")
    write_ct2_model(path, {"a/w16": w16, "a/w32": w32, "a/bf": ("bf16", bf), "a/flag": np.int8(3),
                           "a/heads": np.int16(-1)}, aliases={"b/w": "a/w16"})
    m = ct2_to_hf.read_ct2_model(path)
    assert (m.spec_name, m.spec_revision, m.binary_version) == ("WhisperSpec", 3, 6)
    assert m.variables["a/w16"].dtype == np.float16 and np.array_equal(m.variables["a/w16"], w16)
    assert np.array_equal(m.variables["a/w32"], w32)
    assert m.variables["a/bf"].dtype == np.float32 and np.array_equal(m.variables["a/bf"], bf)
    assert m.scalar("a/flag") == 3 and m.scalar("a/heads") == -1
    assert m.aliases == {"b/w": "a/w16"}


def test_reader_refuses_truncated_and_unknown_files(tmp_path):
    path = str(tmp_path / "model.bin")
    write_ct2_model(path, {"x": np.zeros((64, 8), np.float16)})
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:200])  # what joining too few parts of a split model.bin gives
    with pytest.raises(ct2_to_hf.Ct2FormatError, match="truncated: the data of 'x'"):
        ct2_to_hf.read_ct2_model(path)
    write_ct2_model(path, {"x": np.zeros(2, np.float32)}, version=5)
    with pytest.raises(ct2_to_hf.Ct2FormatError, match="binary version 5"):
        ct2_to_hf.read_ct2_model(path)


def tiny_whisper_as_ct2(model):
    """CTranslate2 variables of a transformers WhisperForConditionalGeneration (fused q/k/v)."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    cfg = model.config
    v = {"decoder/activation": np.int8(3), "decoder/pre_norm": np.int8(1), "decoder/alibi": np.int8(0),
         "encoder/num_heads": np.int16(cfg.encoder_attention_heads),
         "decoder/num_heads": np.int16(cfg.decoder_attention_heads)}

    for kind, hf, ct2, projs in ct2_to_hf.whisper_tensor_map(cfg.encoder_layers, cfg.decoder_layers):
        if kind == "tensor":
            v[ct2] = sd[hf]
        elif kind == "linear":
            v[f"{ct2}/weight"], v[f"{ct2}/bias"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]
        elif kind == "norm":
            v[f"{ct2}/gamma"], v[f"{ct2}/beta"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]
        else:  # fused, as CTranslate2 stores it: rows stacked, k_proj's missing bias as zeros
            v[f"{ct2}/weight"] = np.concatenate([sd[f"{hf}.{p}.weight"] for p in projs])
            zeros = np.zeros_like(sd[f"{hf}.v_proj.bias"])
            v[f"{ct2}/bias"] = np.concatenate([sd.get(f"{hf}.{p}.bias", zeros) for p in projs])
    return v, {"decoder/projection/weight": "decoder/embeddings/weight"}


def test_converter_round_trips_a_tiny_whisper(tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from espnet_hdmole.asr.whisper_encoder import WhisperSpeechEncoder

    cfg = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=40, num_mel_bins=80,
                        max_source_positions=100, max_target_positions=20, vocab_size=60, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=3, begin_suppress_tokens=None,
                        suppress_tokens=None)
    model = WhisperForConditionalGeneration(cfg).eval()
    ct2_dir, out_dir = tmp_path / "ct2", tmp_path / "hf"
    ct2_dir.mkdir()
    variables, aliases = tiny_whisper_as_ct2(model)
    write_ct2_model(str(ct2_dir / "model.bin"), variables, aliases)
    with pytest.raises(ct2_to_hf.Ct2FormatError, match="needs its tokenizer.json"):
        ct2_to_hf.convert_ct2_whisper(str(ct2_dir), str(out_dir))
    (ct2_dir / "tokenizer.json").write_text(json.dumps({"added_tokens": [
        {"id": 2, "content": "<|endoftext|>"}, {"id": 3, "content": "<|startoftranscript|>"}]}))
    (ct2_dir / "config.json").write_text(json.dumps({"suppress_ids": [5], "suppress_ids_begin": [2]}))
    sizes = ct2_to_hf.convert_ct2_whisper(str(ct2_dir), str(out_dir))
    assert sizes["decoder_attention_heads"] == 4 and sizes["encoder_ffn_dim"] == 48
    config = json.loads((out_dir / "config.json").read_text())
    assert (config["eos_token_id"], config["decoder_start_token_id"], config["suppress_tokens"]) == (2, 3, [5])
    loaded = WhisperForConditionalGeneration.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    want = {k: t.half().float() for k, t in model.state_dict().items()}
    got = loaded.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    encoder = WhisperSpeechEncoder(input_size=1, whisper_dir=str(out_dir))
    assert encoder.output_size() == 32

    variables["encoder/layer_1/self_attention/linear_0/bias"][40] = 1.0  # a key bias
    write_ct2_model(str(ct2_dir / "model.bin"), variables, aliases)
    with pytest.raises(ct2_to_hf.Ct2FormatError, match="non-zero key bias"):
        ct2_to_hf.convert_ct2_whisper(str(ct2_dir), str(tmp_path / "hf2"))


# ---------------------------------------------------------------- real Whisper base weights


@pytest.fixture(scope="module")
def real_whisper_dir():
    path = os.environ.get("HDMOLE_WHISPER_DIR") or os.path.join(ROOT, "tools", "whisper-base")
    if not os.path.isfile(os.path.join(path, "config.json")):
        pytest.skip(f"no Whisper weights in {path}: {INSTALL_HINT}")
    return path


def speech_like_signal(seconds=3.0, seed=0):
    """Voiced syllables (glottal pulses through vowel formants, f0 and loudness moving) between noise bursts."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480)]  # a i u e
    out = np.zeros(int(seconds * SR))
    syllable = int(0.25 * SR)
    start = int(0.3 * SR)
    for k in range((len(out) - 2 * start) // syllable):
        t = np.arange(syllable) / SR
        f0 = 120 + 30 * np.sin(2 * np.pi * (0.7 * k + t * 3))
        pulses = np.diff(np.floor(np.cumsum(f0) / SR), prepend=0.0)  # one impulse per period
        voiced = pulses
        for formant, bandwidth in zip(vowels[k % 4], (80, 100, 120)):
            r = np.exp(-np.pi * bandwidth / SR)
            voiced = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * formant / SR), r * r], voiced)
        envelope = np.sin(np.pi * np.arange(syllable) / syllable) ** 2
        burst = np.diff(rng.standard_normal(syllable // 5), prepend=0.0) * 0.05  # fricative-like onset
        seg = voiced * envelope * (0.6 + 0.4 * rng.random())
        seg[: len(burst)] += burst
        out[start + k * syllable : start + (k + 1) * syllable] += seg
    out += 1e-4 * rng.standard_normal(len(out))
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def espeak_speech(text="the quick brown fox jumps over the lazy dog"):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (tools/install.sh installs it as root)")
    raw = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", text], check=True,
                         stdout=subprocess.PIPE).stdout
    import io

    import soundfile as sf
    from scipy.signal import resample_poly

    wave, rate = sf.read(io.BytesIO(raw), dtype="float32")
    g = np.gcd(SR, rate)
    return resample_poly(wave, SR // g, rate // g).astype(np.float32)


INPUTS = {"speech_like_3s": speech_like_signal, "espeak_fox": espeak_speech}


@pytest.fixture(scope="module", params=sorted(INPUTS))
def real_case(request, real_whisper_dir):
    """(wave, project encoder output (T', d) on the raw wave, WhisperFeatureExtractor features)."""
    from transformers import WhisperFeatureExtractor

    from espnet_hdmole.asr.whisper_encoder import WhisperSpeechEncoder

    wave = INPUTS[request.param]()
    encoder = _cached(real_whisper_dir, "project", lambda: WhisperSpeechEncoder(1, real_whisper_dir))
    with torch.no_grad():
        out, olens, _ = encoder(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    fe = WhisperFeatureExtractor.from_pretrained(real_whisper_dir)
    feats = fe(wave, sampling_rate=SR, return_tensors="np").input_features
    return wave, out[0, : int(olens[0])].numpy(), feats


_MODELS = {}


def _cached(path, kind, make):
    if (path, kind) not in _MODELS:
        _MODELS[(path, kind)] = make()
    return _MODELS[(path, kind)]


def assert_close(ours, reference, what):
    diff = np.abs(ours - reference[: len(ours)])
    print(f"{what}: {len(ours)} frames, max abs diff {diff.max():.2e}, mean {diff.mean():.2e}, "
          f"max |ref| {np.abs(reference).max():.1f}")
    assert diff.max() <= MAX_ABS_DIFF and diff.mean() <= MEAN_ABS_DIFF, what


def test_encoder_matches_transformers_on_real_weights(real_whisper_dir, real_case):
    from transformers import WhisperModel

    _, ours, feats = real_case
    reference = _cached(real_whisper_dir, "transformers",
                        lambda: WhisperModel.from_pretrained(real_whisper_dir, dtype=torch.float32).encoder.eval())
    with torch.no_grad():
        ref = reference(torch.from_numpy(feats)).last_hidden_state[0].numpy()
    assert_close(ours, ref, "project vs transformers")


def test_encoder_matches_ctranslate2_on_real_weights(real_whisper_dir, real_case):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (not a project dependency)")
    ct2_dir = os.path.join(real_whisper_dir, "ctranslate2")
    if not os.path.isfile(os.path.join(ct2_dir, "model.bin")):
        pytest.skip(f"no CTranslate2 model in {ct2_dir}: {INSTALL_HINT}")
    model = _cached(real_whisper_dir, "ctranslate2", lambda: ctranslate2.models.Whisper(
        ct2_dir, device="cpu", compute_type="float32", intra_threads=torch.get_num_threads()))
    _, ours, feats = real_case
    ref = np.array(model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))[0]
    assert_close(ours, ref, "project vs ctranslate2")


def test_converted_decoder_transcribes_speech(real_whisper_dir):
    """The decoder and tokenizer were converted too: greedy decoding of espeak-ng speech."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    wave = espeak_speech()
    model = WhisperForConditionalGeneration.from_pretrained(real_whisper_dir, dtype=torch.float32).eval()
    feats = WhisperFeatureExtractor.from_pretrained(real_whisper_dir)(wave, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(feats.input_features, language="en", task="transcribe")
    text = AutoTokenizer.from_pretrained(real_whisper_dir).batch_decode(tokens, skip_special_tokens=True)[0]
    assert "quick brown fox" in text.lower() and "lazy dog" in text.lower(), text
