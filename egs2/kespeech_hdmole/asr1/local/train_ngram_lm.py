#!/usr/bin/env python3
"""Stage 3: an n-gram LM over the LLM's tokens for shallow fusion in decoding (ARPA file).

    python local/train_ngram_lm.py --llm_dir exp/llm --train_text data/source_train/text data/train/text \\
        --plain_text data/ngram_text --valid_text data/source_dev/text data/dev/text --order 4 --out exp/ngram/lm.arpa

The text is written in the tokens of --llm_dir's tokenizer (the ARPA words are its token strings),
then an interpolated Kneser-Ney LM is estimated (espnet_hdmole.lm.kneser_ney). Kaldi-style text
files ('uid text') and plain files (one sentence a line) are read as in LLM pre-training. The log
gives the perplexity of the --valid_text transcripts. The file is written whole or not at all.
"""
import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrain_llm import read_sentences  # noqa: E402

from espnet_hdmole.asr.llm_utils import load_tokenizer  # noqa: E402
from espnet_hdmole.errors import UserError, UserFileError, run_cli  # noqa: E402
from espnet_hdmole.lm.kneser_ney import estimate, write_arpa  # noqa: E402
from espnet_hdmole.lm.ngram_scorer import NgramScorer  # noqa: E402


def token_words(tokenizer, sentences):
    """Each sentence as the token strings of the tokenizer (the ARPA words)."""
    out = []
    for s in sentences:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        words = tokenizer.convert_ids_to_tokens(ids)
        bad = [w for w in words if not w or any(c.isspace() for c in w)]
        if bad:
            raise UserError(f"the tokenizer writes {s!r} with tokens that hold whitespace ({bad[:3]}), "
                            "which an ARPA file cannot hold")
        out.append(words)
    return out


def perplexity(scorer: NgramScorer, tokenizer, sentences) -> float:
    """Per-token perplexity (eos included) of the sentences under the LM."""
    total, n = 0.0, 0
    for s in sentences:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for i, t in enumerate(ids):
            total += float(scorer.vector(ids[:i])[t])
            n += 1
    return math.exp(-total / max(n, 1))


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm_dir", required=True, help="the LLM directory whose tokenizer writes the text")
    p.add_argument("--train_text", nargs="+", required=True, help="Kaldi-style text files")
    p.add_argument("--plain_text", nargs="*", default=[], help="plain text files, one sentence a line")
    p.add_argument("--valid_text", nargs="*", default=[], help="Kaldi-style text files for the perplexity")
    p.add_argument("--order", type=int, default=4, help="n-gram order (default: %(default)s)")
    p.add_argument("--out", required=True, help="the ARPA file to write")
    p.add_argument("--verbose", default="false", help="show the traceback of a user error")
    return p


def main(argv=None):
    a = get_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    if a.order < 1:
        raise UserError(f"--order must be at least 1, not {a.order}")
    for f in a.train_text + a.plain_text + a.valid_text:
        if not Path(f).is_file():
            raise UserFileError(f"text file '{f}' does not exist")
    tok = load_tokenizer(a.llm_dir)
    t0 = time.time()
    kaldi, plain = read_sentences(a.train_text, []), read_sentences([], a.plain_text)
    if not kaldi + plain:
        raise UserError(f"no sentences in {' '.join(a.train_text + a.plain_text)}")
    words = token_words(tok, kaldi + plain)
    probs, backoffs = estimate(words, a.order)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        write_arpa(f, probs, backoffs)
    os.replace(tmp, out)
    counts = ", ".join(f"{len(p) + (k == 1)} {k}-grams" for k, p in enumerate(probs) if k)
    logging.info(f"{len(kaldi)} transcripts + {len(plain)} plain sentences, {sum(map(len, words))} tokens -> "
                 f"{out}: order {a.order}, {counts}, {time.time() - t0:.1f} s")
    valid = read_sentences(a.valid_text, [])
    if valid:
        ppl = perplexity(NgramScorer(out, tok), tok, valid)
        logging.info(f"perplexity of the {len(valid)} transcripts of {' '.join(a.valid_text)}: {ppl:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
