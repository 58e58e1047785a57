"""Loading a causal LLM and its tokenizer from a local directory, and a character tokenizer."""
import json
import logging
import os
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple, Union

import torch

from espnet_hdmole.errors import UserError, UserFileError


def check_model_dir(path: Union[str, Path], what: str, need_weights: bool = True) -> Path:
    """Raise a clear error unless ``path`` is a local transformers model directory."""
    p = Path(path)
    if not p.is_dir():
        raise UserFileError(f"{what} directory '{p}' does not exist (models load from local directories only)")
    if not (p / "config.json").is_file():
        raise UserFileError(f"{what} directory '{p}' has no config.json: not a transformers model directory")
    if need_weights:
        names = os.listdir(p)
        if not any(n.endswith((".safetensors", ".bin")) or n.endswith(".safetensors.index.json") for n in names):
            raise UserFileError(
                f"{what} directory '{p}' has config.json but no weights (*.safetensors or *.bin)"
            )
    return p


def load_tokenizer(llm_dir: Union[str, Path]):
    """The tokenizer saved in the LLM directory (local files only)."""
    from transformers import AutoTokenizer

    p = check_model_dir(llm_dir, "LLM", need_weights=False)
    if not any((p / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise UserFileError(f"LLM directory '{p}' has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    cls_name = ""
    if (p / "tokenizer_config.json").is_file():
        cls_name = json.loads((p / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class", "")
    if cls_name in ("TokenizersBackend", "PreTrainedTokenizerFast") and (p / "tokenizer.json").is_file():
        # a plain tokenizers pipeline (e.g. our character tokenizer): load it as it is, or
        # AutoTokenizer would rebuild it as the tokenizer of the model type in config.json
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(str(p), local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if tok.eos_token_id is None:
        raise UserError(f"the tokenizer in '{p}' has no eos token; set eos_token in its tokenizer_config.json")
    return tok


def load_causal_lm(llm_dir: Union[str, Path], dtype: str = "float32") -> torch.nn.Module:
    """A ``transformers`` causal LM from a local directory (Qwen2-style models are the reference)."""
    import transformers
    from transformers import AutoModelForCausalLM

    p = check_model_dir(llm_dir, "LLM")
    transformers.utils.logging.disable_progress_bar()
    level = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, dtype=getattr(torch, dtype))
    finally:
        transformers.utils.logging.set_verbosity(level)
    logging.info(f"loaded LLM {type(model).__name__} from {p}")
    return model


def unencodable_chars(tokenizer, text: str) -> str:
    """Characters of ``text`` the tokenizer cannot encode faithfully (empty when all are fine)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids:
        return "".join(sorted({c for c in text if unk in tokenizer(c, add_special_tokens=False)["input_ids"]}))
    if tokenizer.decode(ids) != text:
        return "".join(sorted({c for c in text if tokenizer.decode(tokenizer(c, add_special_tokens=False)["input_ids"]) != c}))
    return ""


def one_line(text: str) -> str:
    """``text`` as one line of a Kaldi-style file: every run of whitespace, line breaks of any
    kind included (newline, carriage return, U+2028 ...), becomes one space; no space at the ends."""
    return " ".join(text.split())


# how a token's whitespace is shown in a token file (space-separated tokens, one line each)
_TOKEN_SPACE = {" ": "\u2581", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def readable_tokens(tokenizer, ids: Sequence[int]) -> List[str]:
    """Each token as the text it stands for (今天, not the byte-level piece ä»Ĭå¤©), for token files.

    A token whose bytes do not decode to whole characters (part of a character's UTF-8 bytes) is
    shown by its piece; a space inside a token as U+2581 (SentencePiece's mark); newline, carriage
    return and tab as \\n, \\r, \\t; any other whitespace as U+2581 too. So no token is empty or
    holds whitespace. (A SentencePiece token decoded alone loses its word-initial mark; Chinese
    text has none.)"""
    out = []
    for i in ids:
        text = tokenizer.decode([int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not text or "\ufffd" in text:
            text = tokenizer.convert_ids_to_tokens(int(i)) or f"<{int(i)}>"
        text = "".join(_TOKEN_SPACE.get(c, "\u2581" if c.isspace() else c) for c in text)
        out.append(text)
    return out


def noise_token_ids(tokenizer, num_embeddings: int) -> torch.Tensor:
    """The ids token dropout may put in place of a transcript token: no special token and no token
    added on top of the tokenizer's vocabulary (such as a converted model's [PAD...] fillers or
    its chat markers), only ids the LLM has an embedding for."""
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    special = set(tokenizer.all_special_ids) | added
    ids = [i for i in range(min(len(tokenizer), num_embeddings)) if i not in special]
    if not ids:
        raise UserError("token_dropout: the tokenizer has no ordinary token to draw")
    return torch.tensor(ids, dtype=torch.long)


def build_char_tokenizer(chars: Iterable[str], out_dir: Union[str, Path], extra_tokens: Tuple[str, ...] = ()):
    """Save a character-level ``transformers`` tokenizer (one token per character) to out_dir.

    Special tokens: <pad>=0, <unk>=1, <|endoftext|>=2 (the eos). Decoding joins characters
    without spaces. Returns the loaded tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|endoftext|>"] + list(extra_tokens)
    vocab = {t: i for i, t in enumerate(specials)}
    for c in sorted(set(chars)):
        if c not in vocab and len(c) == 1:
            vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|endoftext|>")
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return load_tokenizer(out_dir) if (Path(out_dir) / "config.json").exists() else fast


def main(argv=None) -> int:
    """python -m espnet_hdmole.asr.llm_utils DIR: check that DIR holds an LLM and its tokenizer."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("llm_dir")
    a = ap.parse_args(argv)
    check_model_dir(a.llm_dir, "LLM")
    load_tokenizer(a.llm_dir)
    print(f"{a.llm_dir}: LLM and tokenizer OK")
    return 0


if __name__ == "__main__":
    import sys

    from espnet_hdmole.errors import run_cli

    sys.exit(run_cli(main))
