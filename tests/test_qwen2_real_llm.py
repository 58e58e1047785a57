"""The LLM-based ASR model with a real LLM: Qwen2.5-Coder-0.5B-Instruct (installed by
``bash tools/install_qwen2.sh`` into tools/qwen2-0.5b, or a directory named by HDMOLE_QWEN2_DIR).

Skipped unless that directory exists. With it: a tiny transformer encoder, the projector and
HDMoLE adapters on the LLM's q_proj/v_proj (the LLM itself frozen) are trained through
LLMASRTask.main on three short Chinese utterances (fixed random features, as in tests/tiny.py)
until the model reproduces them; greedy and beam-2 decoding through llm_asr_inference must
give the transcripts back. About 40 s on 2 CPU cores (loads 2.5 GB three times); HDMOLE_QWEN2_SKIP=1 skips it.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_feats_set, train_args  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QWEN2_DIR = Path(os.environ.get("HDMOLE_QWEN2_DIR") or ROOT / "tools" / "qwen2-0.5b")
INSTALL_HINT = ("run `bash tools/install_qwen2.sh --extra-path DIR` (see tools/install_qwen2.py; DIR holds the gguf "
                "package) or set HDMOLE_QWEN2_DIR to a converted Qwen2 directory")
TRANSCRIPTS = ["你好世界", "今天天气很好", "谢谢大家"]
ACCENTS = ["Mandarin", "Beijing", "Southwestern"]

pytestmark = [
    pytest.mark.skipif(not (QWEN2_DIR / "config.json").is_file(), reason=f"no Qwen2 in {QWEN2_DIR}: {INSTALL_HINT}"),
    pytest.mark.skipif(os.environ.get("HDMOLE_QWEN2_SKIP") == "1", reason="HDMOLE_QWEN2_SKIP=1"),
]

HDMOLE_QV = [
    "--use_adapter", "true", "--adapter", "hdmole", "--save_strategy", "required_grad_only",
    "--adapter_conf", "target_modules=['q_proj', 'v_proj']",
    "--adapter_conf", "num_domains=3", "--adapter_conf", "experts_per_domain=2", "--adapter_conf", "rank=4",
    "--adapter_conf", "keep_trainable=['encoder', 'projector', 'accent_head']",
    "--model_conf", "aid_weight=0.5",
]


def read_kaldi(path):
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split(" ", 1) for line in f if line.strip())


def test_the_tokenizer_is_qwen2s_and_encodes_the_transcripts():
    from espnet_hdmole.asr.llm_utils import load_tokenizer, unencodable_chars

    tok = load_tokenizer(QWEN2_DIR)
    assert len(tok) >= 151643 and tok.eos_token == "<|im_end|>"
    for t in TRANSCRIPTS:
        assert unencodable_chars(tok, t) == ""
        assert len(tok(t, add_special_tokens=False)["input_ids"]) < len(t)  # BPE merges Chinese words


def test_real_llm_with_hdmole_overfits_and_decodes(tmp_path):
    from espnet_hdmole.bin.llm_asr_inference import main as infer_main
    from espnet_hdmole.tasks.llm_asr import LLMASRTask

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = make_feats_set(tmp_path / "data", TRANSCRIPTS, ACCENTS, frames=12, separable=True)
    exp = tmp_path / "exp"
    LLMASRTask.main(cmd=train_args(exp, data, str(QWEN2_DIR), epochs=3, iters=10, lr=3e-3, extra=HDMOLE_QV))

    # only the adapters, the encoder, projector and accent head were trained and saved
    saved = torch.load(exp / "valid.acc.ave.pth", weights_only=False)
    assert not any(k.startswith("llm.") and not ("q_proj" in k or "v_proj" in k) for k in saved)
    assert sum(v.numel() for v in saved.values()) < 5e6
    stats = torch.load(exp / "checkpoint.pth", weights_only=False)["reporter"]["stats"]
    assert stats[3]["valid"]["acc"] == 1.0, stats[3]["valid"]

    ref = read_kaldi(data / "text")
    for beam in (1, 2):
        out = tmp_path / f"dec_beam{beam}"
        infer_main(["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / "valid.acc.ave.pth"),
                    "--output_dir", str(out), "--beam_size", str(beam),
                    "--data_path_and_name_and_type", f"{data}/feats.scp,speech,kaldi_ark"])
        assert read_kaldi(out / "1best_recog" / "text") == ref, f"beam {beam}"
