"""Tiny models and data built from configs, for the tests (nothing is downloaded)."""
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from espnet_hdmole.asr.llm_utils import build_char_tokenizer

TRANSCRIPTS = ["你好世界", "早上好", "今天天气很好", "我们学习语音识别", "北京欢迎你", "谢谢大家"]
ACCENTS = ["Mandarin", "Beijing", "Southwestern"]
MAX_POS = 100  # the tiny Whisper's positions: 200 mel frames -> 32000 samples = 2.0 s


def make_llm_dir(path, chars: str, hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    """A tiny Qwen2 causal LM with a character tokenizer, saved as a transformers directory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tok = build_char_tokenizer(chars, path)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(str(path))
    return str(path)


def tiny_whisper_config(**overrides):
    """The config of a tiny Whisper (d_model 32, 2 encoder layers, 2-s window)."""
    from transformers import WhisperConfig

    kwargs = dict(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        decoder_layers=1,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=MAX_POS,
        max_target_positions=20,
        vocab_size=100,
        # Whisper's default special-token ids (50256...) do not fit a vocabulary of 100.
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        # Non-zero dropout: outputs would be random if the encoder were left in train mode.
        dropout=0.3,
        attention_dropout=0.3,
        activation_dropout=0.3,
    )
    kwargs.update(overrides)
    return WhisperConfig(**kwargs)


def make_whisper_dir(path, seed: int = 123, **overrides) -> str:
    """A tiny, randomly initialised Whisper model saved as a transformers directory."""
    from transformers import WhisperModel

    torch.manual_seed(seed)
    WhisperModel(tiny_whisper_config(**overrides)).save_pretrained(str(path))
    return str(path)


def write_kaldi(path, rows: Dict[str, str]):
    with open(path, "w", encoding="utf-8") as f:
        for k in sorted(rows):
            f.write(f"{k} {rows[k]}\n")


def make_feats_set(d, transcripts: List[str], accents: Optional[List[str]] = None, dim: int = 20,
                   frames: int = 48, seed: int = 0, separable: bool = False) -> Path:
    """A data dir with feats.scp (kaldi ark), text, utt2accent and speech_shape.

    Features are random but fixed per utterance; with ``separable`` each accent adds its own
    constant offset so that the accent is learnable from the pooled features.
    """
    import kaldiio

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    feats, text, acc, shape = {}, {}, {}, {}
    for i, t in enumerate(transcripts):
        uid = f"utt{i:03d}"
        n = frames + 4 * (i % 3)
        x = rng.randn(n, dim).astype(np.float32)
        if accents is not None:
            a = accents[i % len(accents)] if len(accents) != len(transcripts) else accents[i]
            acc[uid] = a
            if separable:
                x += 2.0 * np.eye(dim, dtype=np.float32)[ACCENTS.index(a) % dim]
        feats[uid], text[uid], shape[uid] = x, t, f"{n},{dim}"
    with kaldiio.WriteHelper(f"ark,scp:{d}/feats.ark,{d}/feats.scp") as w:
        for uid in sorted(feats):
            w(uid, feats[uid])
    write_kaldi(d / "text", text)
    write_kaldi(d / "speech_shape", shape)
    if accents is not None:
        write_kaldi(d / "utt2accent", acc)
    return d


def train_args(out, data, llm_dir, extra=(), epochs=4, iters=25, dim=20, accents=True, lr=3e-3):
    data = Path(data)
    args = [
        "--output_dir", str(out), "--ngpu", "0", "--seed", "0", "--num_workers", "0",
        "--input_size", str(dim), "--encoder", "transformer",
        "--encoder_conf", "output_size=32", "--encoder_conf", "attention_heads=2",
        "--encoder_conf", "linear_units=64", "--encoder_conf", "num_blocks=1",
        "--encoder_conf", "input_layer=linear", "--encoder_conf", "dropout_rate=0.0",
        "--encoder_conf", "positional_dropout_rate=0.0", "--encoder_conf", "attention_dropout_rate=0.0",
        "--model_conf", f"llm_dir={llm_dir}", "--model_conf", "projector_conf={'stack': 2}",
        "--model_conf", "prompt=转写",
        "--optim", "adam", "--optim_conf", f"lr={lr}", "--batch_type", "unsorted", "--batch_size", "6",
        "--max_epoch", str(epochs), "--num_iters_per_epoch", str(iters),
        "--best_model_criterion", "valid,acc,max", "--keep_nbest_models", "1",
        "--use_matplotlib", "false", "--use_tensorboard", "false",
        "--train_shape_file", str(data / "speech_shape"), "--valid_shape_file", str(data / "speech_shape"),
    ]
    for split in ("train", "valid"):
        args += [f"--{split}_data_path_and_name_and_type", f"{data}/feats.scp,speech,kaldi_ark",
                 f"--{split}_data_path_and_name_and_type", f"{data}/text,text,text"]
        if accents:
            args += [f"--{split}_data_path_and_name_and_type", f"{data}/utt2accent,accent,text"]
    if accents:
        args += ["--model_conf", f"accent_list={ACCENTS}"]
    return args + list(extra)
