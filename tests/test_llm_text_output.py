"""What a real LLM may emit, written safely: one hypothesis line per utterance whatever the text
holds, readable token files with a byte-level BPE tokenizer, and token dropout that draws only
ordinary tokens (issue 14's defects of the real-LLM probe)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from llm_asr_common import task_batch  # noqa: E402
from tiny import ACCENTS, TRANSCRIPTS, make_feats_set, make_llm_dir, train_args  # noqa: E402

from espnet_hdmole.asr.llm_utils import (  # noqa: E402
    build_char_tokenizer, noise_token_ids, one_line, readable_tokens)
from espnet_hdmole.bin.llm_asr_inference import main as infer_main  # noqa: E402
from espnet_hdmole.tasks.llm_asr import LLMASRTask  # noqa: E402


def byte_level_tokenizer(tmp_path):
    """A small byte-level BPE tokenizer (GPT-2/Qwen2 style) trained here on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRANSCRIPTS * 20 + ["今天 天气\n很好"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.add_tokens([f"[PAD{i}]" for i in range(3)])  # a converted model's filler tokens
    return fast


def test_one_line_joins_every_kind_of_line_break():
    assert one_line(" 今天\n天气\r\n很好\u2028。\t ") == "今天 天气 很好 。"
    assert one_line("\n\n") == ""


def test_token_files_show_the_text_of_byte_level_tokens(tmp_path):
    tok = byte_level_tokenizer(tmp_path)
    ids = tok("今天 天气\n很好", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert any("ä" in p or "å" in p for p in pieces)  # what a byte-level token file used to show
    shown = readable_tokens(tok, ids)
    assert len(shown) == len(ids) and all(s and not any(c.isspace() for c in s) for s in shown)
    assert "".join(shown).replace("\u2581", " ").replace("\\n", "\n") == "今天 天气\n很好"
    # a character's first byte alone is shown by its piece, not as a replacement character
    first_byte = tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(ids)[0][0])
    assert "\ufffd" not in readable_tokens(tok, [first_byte])[0]
    chars = build_char_tokenizer("今天", tmp_path / "char")
    assert readable_tokens(chars, chars("今天", add_special_tokens=False)["input_ids"]) == ["今", "天"]


def test_token_dropout_draws_no_special_and_no_added_token(tmp_path):
    tok = byte_level_tokenizer(tmp_path)
    ids = noise_token_ids(tok, len(tok))
    specials = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(f"[PAD{i}]") for i in range(3)}
    assert len(specials) == 4 and not specials & set(ids.tolist())
    assert len(ids) == len(tok) - 4
    assert noise_token_ids(tok, 100).max() < 100  # only ids the LLM has an embedding for


def test_the_model_replaces_tokens_by_ordinary_ones_and_writes_one_line_per_hypothesis(tmp_path, monkeypatch):
    llm = make_llm_dir(tmp_path / "llm", "".join(TRANSCRIPTS) + "转写")
    data = make_feats_set(tmp_path / "data", TRANSCRIPTS, ACCENTS * 2)
    args = LLMASRTask.get_parser().parse_args(
        train_args(tmp_path / "exp", data, llm, epochs=1, iters=2, extra=["--model_conf", "token_dropout=0.5"]))
    model = LLMASRTask.build_model(args)
    _, batch = task_batch(args, data, train=False)
    model.train()
    model(**batch)  # a training step's forward: token dropout draws
    torch.testing.assert_close(model._noise_ids, noise_token_ids(model.tokenizer, len(model.tokenizer)))
    assert not set(model._noise_ids.tolist()) & set(model.tokenizer.all_special_ids)
    assert "_noise_ids" not in model.state_dict()  # derived from the tokenizer, not saved
    LLMASRTask.main(args=args)
    exp = tmp_path / "exp"

    from espnet_hdmole.asr.llm_asr_model import LLMASRModel

    real = LLMASRModel.recognize

    def chatty(self, *a, **k):  # an LLM that writes line breaks into its hypotheses
        hyps = real(self, *a, **k)
        for h in hyps:
            h["text"] = "第一行\n第二行\r\n" + h["text"] + "\u2028"
        return hyps

    monkeypatch.setattr(LLMASRModel, "recognize", chatty)
    out = tmp_path / "dec"
    infer_main(["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / "valid.acc.ave.pth"),
                "--output_dir", str(out), "--data_path_and_name_and_type", f"{data}/feats.scp,speech,kaldi_ark"])
    lines = (out / "1best_recog" / "text").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(TRANSCRIPTS)
    assert all(line.split(" ", 1)[1].startswith("第一行 第二行") for line in lines[:-1])
    assert all("\u2028" not in line and "\r" not in line for line in lines)
