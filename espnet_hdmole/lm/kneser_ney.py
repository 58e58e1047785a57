"""Estimating an interpolated Kneser-Ney n-gram LM (one discount per order) and writing it as ARPA.

Each sentence is read as ``<s> w1 ... wm </s>``. The counts are the usual Kneser-Ney ones:
the highest order keeps raw counts; a lower-order n-gram counts its distinct left contexts, except
one that starts with ``<s>`` (it has none), which keeps its raw count. One absolute discount per
order, ``D = n1 / (n1 + 2 n2)`` from the count-of-counts. The interpolated probabilities

    p(w | h) = max(a(h w) - D, 0) / S(h) + gamma(h) * p(w | h minus its first word),
    gamma(h) = D * (number of words seen after h) / S(h),   S(h) = sum of a(h .)

end in a uniform distribution over the vocabulary and ``<unk>``. Written in the ARPA backoff
form (the listed n-grams carry their interpolated probability, each context its gamma as backoff
weight), so that any ARPA reader, e.g. KenLM's, computes the same probabilities.
"""
import math
from collections import Counter, defaultdict
from typing import Dict, Iterable, List, Sequence, TextIO, Tuple

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
Gram = Tuple[str, ...]


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> List[Counter]:
    """Raw counts of every n-gram of each order 1..order (index k holds order k; 0 is unused)."""
    raw = [Counter() for _ in range(order + 1)]
    for words in sentences:
        seq = (BOS, *words, EOS)
        for k in range(1, order + 1):
            for i in range(len(seq) - k + 1):
                raw[k][seq[i:i + k]] += 1
    del raw[1][(BOS,)]  # <s> is context only, never predicted
    return raw


def adjusted_counts(raw: List[Counter]) -> List[Counter]:
    """Kneser-Ney counts: raw at the top order and for n-grams starting with <s>; otherwise the
    number of distinct words seen to the n-gram's left."""
    order = len(raw) - 1
    adj = [Counter() for _ in range(order + 1)]
    adj[order] = Counter(raw[order])
    for k in range(order - 1, 0, -1):
        for g, c in raw[k].items():
            if g[0] == BOS:
                adj[k][g] = c
        for g in raw[k + 1]:
            if g[1] != BOS:
                adj[k][g[1:]] += 1
    return adj


def discount(counts: Counter) -> float:
    """The absolute discount n1 / (n1 + 2 n2) of one order (0.5 when the formula is undefined)."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    return n1 / (n1 + 2 * n2) if n1 > 0 and n2 > 0 else 0.5


def estimate(sentences: Iterable[Sequence[str]], order: int):
    """-> (probs, backoffs): per order k, {n-gram: log10 p} and {context n-gram: log10 gamma}."""
    if order < 1:
        raise ValueError(f"the n-gram order must be at least 1, not {order}")
    adj = adjusted_counts(count_ngrams(sentences, order))
    if not adj[1]:
        raise ValueError("no words to estimate an n-gram LM from")
    probs: List[Dict[Gram, float]] = [dict() for _ in range(order + 1)]
    gammas: List[Dict[Gram, float]] = [dict() for _ in range(order + 1)]  # indexed by context length
    vocab = [g[0] for g in adj[1]] + [UNK]
    lin: List[Dict[Gram, float]] = [dict() for _ in range(order + 1)]  # linear probabilities
    for k in range(1, order + 1):
        d = discount(adj[k])
        total: Dict[Gram, float] = defaultdict(float)
        types: Dict[Gram, int] = defaultdict(int)
        for g, c in adj[k].items():
            total[g[:-1]] += c
            types[g[:-1]] += 1
        gamma = {h: d * types[h] / total[h] for h in total}
        for g, c in adj[k].items():
            h = g[:-1]
            lower = lin[k - 1][g[1:]] if k > 1 else 1.0 / len(vocab)
            lin[k][g] = max(c - d, 0.0) / total[h] + gamma[h] * lower
        if k == 1:
            lin[1][(UNK,)] = gamma[()] / len(vocab)
        gammas[k - 1] = gamma
    for k in range(1, order + 1):
        probs[k] = {g: math.log10(p) for g, p in lin[k].items()}
    backoffs = [{h: math.log10(v) for h, v in gammas[k].items()} for k in range(order + 1)]
    return probs, backoffs


def write_arpa(f: TextIO, probs: List[Dict[Gram, float]], backoffs: List[Dict[Gram, float]]) -> None:
    """ARPA text: every listed n-gram with its log10 probability and, below the top order, the
    log10 backoff weight of the n-gram as a context (0 where nothing was seen after it)."""
    order = len(probs) - 1
    listed = [dict(p) for p in probs]
    listed[1][(BOS,)] = -99.0  # conventional: <s> is listed as a context, never predicted
    f.write("\\data\\\n")
    for k in range(1, order + 1):
        f.write(f"ngram {k}={len(listed[k])}\n")
    for k in range(1, order + 1):
        f.write(f"\n\\{k}-grams:\n")
        for g in sorted(listed[k]):
            line = f"{listed[k][g]:.6f}\t{' '.join(g)}"
            if k < order:
                line += f"\t{backoffs[k].get(g, 0.0):.6f}"
            f.write(line + "\n")
    f.write("\n\\end\\\n")
