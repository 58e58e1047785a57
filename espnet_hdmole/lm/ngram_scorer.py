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
import hashlib
import json
import logging
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from espnet_hdmole.errors import UserError, UserFileError

LN10 = math.log(10.0)
BOS_ID = -1  # <s> in a context: not a token of the tokenizer
MIN_KNOWN_SHARE = 0.99  # of the LM's unigram words that must be tokens of the tokenizer
COMPILED_VERSION = 1  # of the compiled tables kept beside an ARPA file


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


def compiled_path(path: Union[str, Path]) -> Path:
    """Where NgramScorer keeps the compiled tables of the ARPA file ``path``."""
    return Path(str(path) + ".compiled.npz")


def _content_key(path: Union[str, Path], vocab: Dict[str, int]) -> str:
    """sha256 over the ARPA file's bytes, the tokenizer's vocabulary (with the ids given to </s> and
    <s>) and the compiled format's version."""
    h = hashlib.sha256(f"compiled v{COMPILED_VERSION}\n".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    return h.hexdigest()


class NgramScorer:
    """``scorer(histories, width)``: (N, width) natural-log probabilities of every next token."""

    def __init__(self, path: Union[str, Path], tokenizer, cache_size: int = 20000, compiled_cache: bool = True):
        """``compiled_cache``: keep the compiled tables beside the ARPA file (``<path>.compiled.npz``,
        tied to the file's and the tokenizer's content by a sha256) and load them from there next
        time: parsing and compiling the demo's 7.6-MB 4-gram takes ~3 s per decoding process."""
        vocab = dict(tokenizer.get_vocab())
        vocab["</s>"] = tokenizer.eos_token_id
        vocab["<s>"] = BOS_ID
        self.path, self.size = str(path), max(vocab.values()) + 1
        self._cache: "OrderedDict[Tuple[int, ...], np.ndarray]" = OrderedDict()
        self.cache_size = cache_size
        key = _content_key(path, vocab) if compiled_cache and Path(path).is_file() else None  # (read_arpa says what is missing)
        if key is not None and self._load_compiled(key):
            return
        self._compile(read_arpa(path), vocab)
        if key is not None:
            self._save_compiled(key)

    def _compile(self, grams, vocab: Dict[str, int]) -> None:
        path = self.path
        self.order = len(grams) - 1
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

    # ---- the compiled tables beside the ARPA file (plain arrays: np.load without pickle) ----
    def _save_compiled(self, key: str) -> None:
        arrays = {"key": np.array(key), "order": np.array(self.order), "floor": np.array(self.floor, dtype=np.float64),
                  "unigram": self.unigram}
        for k in range(2, self.order + 1):
            items = list(self.next[k].items())
            arrays[f"ctx{k}"] = np.array([h for h, _ in items], dtype=np.int64).reshape(len(items), k - 1)
            arrays[f"off{k}"] = np.cumsum([0] + [len(i) for _, (i, _) in items], dtype=np.int64)
            arrays[f"ids{k}"] = np.concatenate([i for _, (i, _) in items] or [np.zeros(0, np.int64)])
            arrays[f"logp{k}"] = np.concatenate([p for _, (_, p) in items] or [np.zeros(0, np.float32)])
        for n in range(1, self.order + 1):
            items = [(h, v) for h, v in self.backoff.items() if len(h) == n]
            arrays[f"bo_ctx{n}"] = np.array([h for h, _ in items], dtype=np.int64).reshape(len(items), n)
            arrays[f"bo{n}"] = np.array([v for _, v in items], dtype=np.float64)
        target = compiled_path(self.path)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, target)  # atomic: decoders running side by side may both write it
        except OSError as e:  # e.g. a read-only directory: compile again next time
            logging.info(f"n-gram LM {self.path}: compiled tables not kept ({e})")
            tmp.unlink(missing_ok=True)

    def _load_compiled(self, key: str) -> bool:
        target = compiled_path(self.path)
        if not target.is_file():
            return False
        try:
            with np.load(target, allow_pickle=False) as z:
                if str(z["key"]) != key or z["unigram"].shape != (self.size,):
                    return False
                data = {name: z[name] for name in z.files}
        except (OSError, ValueError, KeyError):
            return False  # unreadable or from another version: compile again
        self.order, self.floor, self.unigram = int(data["order"]), float(data["floor"]), data["unigram"]
        self.next = [dict() for _ in range(self.order + 1)]
        for k in range(2, self.order + 1):
            off, ids, logp = data[f"off{k}"], data[f"ids{k}"], data[f"logp{k}"]
            self.next[k] = {tuple(h): (ids[off[i]:off[i + 1]], logp[off[i]:off[i + 1]])
                            for i, h in enumerate(data[f"ctx{k}"].tolist())}
        self.backoff = {}
        for n in range(1, self.order + 1):
            self.backoff.update(zip(map(tuple, data[f"bo_ctx{n}"].tolist()), data[f"bo{n}"].tolist()))
        return True

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
