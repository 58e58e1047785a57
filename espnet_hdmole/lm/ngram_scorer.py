"""An ARPA n-gram LM over an LLM's tokens, scored as one log-probability vector per history.

Shallow fusion (espnet_hdmole.asr.decoding) adds ``weight * log p_ngram(token | history)`` to the
LLM's log-probabilities at each step. The ARPA words are the LLM tokenizer's token strings (what
``convert_ids_to_tokens`` gives; for the demo's character tokenizer, the characters), ``</s>`` is
the tokenizer's eos token and ``<s>`` starts every history. ``espnet_hdmole.bin.ngram_lm_train``
writes such a file; one from another tool (e.g. KenLM over the same tokens) works as well.

A token the LM does not list gets the probability of ``<unk>`` (or, without ``<unk>``, the lowest
unigram probability). An LM most of whose words are not tokens of the tokenizer was made for
another tokenizer and is refused.
"""
import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from espnet_hdmole.errors import UserError, UserFileError

LN10 = math.log(10.0)
BOS_ID = -1  # <s> in a context: not a token of the tokenizer
MIN_KNOWN_SHARE = 0.99  # of the LM's unigram words that must be tokens of the tokenizer


def read_arpa(path: Union[str, Path]):
    """-> per order k (index k), a list of (words, log10 p, log10 backoff); checked against the
    header's counts. A UserError names the file and line of what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserFileError(f"n-gram LM file '{path}' does not exist")
    declared: Dict[int, int] = {}
    grams: List[List[Tuple[Tuple[str, ...], float, float]]] = [[]]
    section, ended = None, False
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            line = line.strip()
            where = f"{path}, line {no}"
            if not line or ended:
                continue
            if line == "\\data\\":
                section = "data"
            elif line == "\\end\\":
                ended = True
            elif line.startswith("\\") and line.endswith("-grams:"):
                try:
                    section = int(line[1:-len("-grams:")])
                except ValueError:
                    raise UserError(f"{where}: bad section header {line!r} (expected \\N-grams:)") from None
                if section != len(grams):
                    raise UserError(f"{where}: section {line!r} out of order (expected \\{len(grams)}-grams:)")
                grams.append([])
            elif section == "data":
                key, _, value = line.partition("=")
                if not key.startswith("ngram ") or not value.strip().isdigit():
                    raise UserError(f"{where}: expected 'ngram N=COUNT' in the \\data\\ section, not {line!r}")
                declared[int(key.split()[1])] = int(value)
            elif isinstance(section, int):
                fields = line.split()
                k = section
                if len(fields) not in (k + 1, k + 2):
                    raise UserError(f"{where}: a {k}-gram line holds a log10 probability, {k} words and "
                                    f"an optional backoff weight, not {line!r}")
                try:
                    logp = float(fields[0])
                    bow = float(fields[k + 1]) if len(fields) == k + 2 else 0.0
                except ValueError:
                    raise UserError(f"{where}: not a number in {line!r}") from None
                grams[k].append((tuple(fields[1:k + 1]), logp, bow))
            else:
                raise UserError(f"{where}: {line!r} before the \\data\\ section: not an ARPA file")
    if not ended:
        raise UserError(f"{path}: no \\end\\ line: the ARPA file is incomplete")
    if not declared or len(grams) - 1 != max(declared):
        raise UserError(f"{path}: the \\data\\ section declares orders {sorted(declared)}, "
                        f"the file has sections 1..{len(grams) - 1}")
    for k, n in declared.items():
        if len(grams[k]) != n:
            raise UserError(f"{path}: \\data\\ declares {n} {k}-grams, the file lists {len(grams[k])}")
    return grams


class NgramScorer:
    """``scorer(histories, width)``: (N, width) natural-log probabilities of every next token."""

    def __init__(self, path: Union[str, Path], tokenizer, cache_size: int = 20000):
        grams = read_arpa(path)
        self.path, self.order = str(path), len(grams) - 1
        vocab = dict(tokenizer.get_vocab())
        vocab["</s>"] = tokenizer.eos_token_id
        vocab["<s>"] = BOS_ID
        self.size = max(vocab.values()) + 1
        words = [g[0][0] for g in grams[1] if g[0][0] not in ("<s>", "<unk>")]
        unknown = [w for w in words if w not in vocab]
        if len(unknown) > (1 - MIN_KNOWN_SHARE) * len(words):
            raise UserError(f"n-gram LM '{path}': {len(unknown)} of its {len(words)} words are not tokens of "
                            f"the LLM's tokenizer (e.g. {unknown[:5]}): it was made for another tokenizer; "
                            "make it with espnet_hdmole.bin.ngram_lm_train --llm_dir <this LLM>")
        if unknown:
            logging.warning(f"n-gram LM {path}: {len(unknown)} words are not tokens of the LLM and are ignored")
        listed = {ws[0]: logp for ws, logp, _ in grams[1] if ws[0] != "<s>"}
        if not listed:
            raise UserError(f"n-gram LM '{path}' lists no word")
        self.floor = listed.get("<unk>", min(listed.values())) * LN10
        self.unigram = np.full(self.size, self.floor, dtype=np.float32)
        self.next: List[Dict[Tuple[int, ...], Tuple[np.ndarray, np.ndarray]]] = [dict() for _ in grams]
        self.backoff: Dict[Tuple[int, ...], float] = {}
        for k in range(1, self.order + 1):
            ext: Dict[Tuple[int, ...], Tuple[List[int], List[float]]] = {}
            for ws, logp, bow in grams[k]:
                if any(w not in vocab for w in ws):
                    continue
                ids = tuple(vocab[w] for w in ws)
                if bow:
                    self.backoff[ids] = bow * LN10
                if ids[-1] == BOS_ID:
                    continue
                if k == 1:
                    self.unigram[ids[0]] = logp * LN10
                else:
                    e = ext.setdefault(ids[:-1], ([], []))
                    e[0].append(ids[-1])
                    e[1].append(logp * LN10)
            if k > 1:
                self.next[k] = {h: (np.array(i, dtype=np.int64), np.array(p, dtype=np.float32))
                                for h, (i, p) in ext.items()}
        self._cache: "OrderedDict[Tuple[int, ...], np.ndarray]" = OrderedDict()
        self.cache_size = cache_size

    def vector(self, history: Sequence[int]) -> np.ndarray:
        """log p(token | <s> + history) for every token id (a read-only array)."""
        ctx = (BOS_ID, *history)[-(self.order - 1):] if self.order > 1 else ()
        hit = self._cache.get(ctx)
        if hit is not None:
            self._cache.move_to_end(ctx)
            return hit
        v = self.unigram
        for k in range(2, self.order + 1):
            if len(ctx) < k - 1:
                break
            h = ctx[len(ctx) - (k - 1):]
            ext = self.next[k].get(h)
            if ext is None and h not in self.backoff:
                continue  # h unseen: p(w | h) is p(w | shorter h)
            v = v + self.backoff.get(h, 0.0)
            if ext is not None:
                v[ext[0]] = ext[1]
        v.setflags(write=False)
        self._cache[ctx] = v
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return v

    def __call__(self, histories: Sequence[Sequence[int]], width: int) -> torch.Tensor:
        """(len(histories), width): ids at or above the tokenizer's size get the unknown floor."""
        out = np.empty((len(histories), width), dtype=np.float32)
        n = min(width, self.size)
        for i, h in enumerate(histories):
            v = self.vector(h)
            out[i, :n] = v[:n]
            out[i, n:] = self.floor
        return torch.from_numpy(out)
