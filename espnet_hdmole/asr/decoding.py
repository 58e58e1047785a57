"""Greedy and beam search over a causal LLM with its KV cache, batched over utterances.

The contexts (prefix, speech embeddings, prompt) differ in length, so they are left-padded:
every sequence then ends at the same position and each step appends one token to all of them.
Position ids count only real (unmasked) positions. The LLM is fed in its own dtype (the contexts
are cast to its embeddings' dtype, e.g. bfloat16) and its log-probabilities are taken in float32.

Shallow fusion: with an n-gram scorer (espnet_hdmole.lm.ngram_scorer.NgramScorer) and a weight,
each step adds ``weight * log p_ngram(token | the tokens so far)`` to the LLM's log-probabilities;
the search and the hypothesis scores use the sum.
"""
from contextlib import nullcontext
from typing import List, Optional, Tuple

import torch

from espnet_hdmole.layers.routing import domain_posterior


def _left_pad(ctx: List[torch.Tensor], dtype: torch.dtype):
    lens = [c.shape[0] for c in ctx]
    n, d = max(lens), ctx[0].shape[1]
    emb = ctx[0].new_zeros(len(ctx), n, d, dtype=dtype)
    mask = torch.zeros(len(ctx), n, dtype=torch.long, device=ctx[0].device)
    for b, c in enumerate(ctx):
        emb[b, n - lens[b]:] = c
        mask[b, n - lens[b]:] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return emb, mask, pos


def _step(llm, emb, mask, pos, cache, g):
    with domain_posterior(g) if g is not None else nullcontext():
        out = llm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, past_key_values=cache,
                  use_cache=True, logits_to_keep=1)
    return torch.log_softmax(out.logits[:, -1].float(), dim=-1), out.past_key_values


def _fuse(logp: torch.Tensor, histories, ngram, weight: float) -> torch.Tensor:
    """The LLM's log-probabilities plus the weighted n-gram ones (``histories``: token ids so far)."""
    if ngram is None or weight == 0.0:
        return logp
    return logp + weight * ngram(histories, logp.shape[-1]).to(logp.device)


def greedy_search(
    llm, ctx: List[torch.Tensor], eos_id: int, max_new_tokens: int, g: Optional[torch.Tensor] = None,
    ngram=None, ngram_weight: float = 0.0,
) -> List[Tuple[List[int], float]]:
    """Greedy decoding; returns (token ids without eos, score) per utterance: the log-probability,
    plus the weighted n-gram log-probability with shallow fusion."""
    emb, mask, pos = _left_pad(ctx, llm.get_input_embeddings().weight.dtype)
    b = len(ctx)
    hyps: List[List[int]] = [[] for _ in range(b)]
    logp, cache = _step(llm, emb, mask, pos, None, g)
    logp = _fuse(logp, hyps, ngram, ngram_weight)
    scores = torch.zeros(b)
    done = torch.zeros(b, dtype=torch.bool)
    embed = llm.get_input_embeddings()
    for _ in range(max_new_tokens):
        tok = logp.argmax(-1)
        step, tok_cpu = logp.gather(1, tok[:, None])[:, 0].cpu(), tok.cpu()  # (the bookkeeping stays on the CPU)
        scores += torch.where(done, 0.0, step)
        for i in range(b):
            if not done[i] and tok_cpu[i] != eos_id:
                hyps[i].append(int(tok_cpu[i]))
        done |= tok_cpu == eos_id
        if done.all():
            break
        mask = torch.cat([mask, mask.new_ones(b, 1)], 1)
        pos = pos[:, -1:] + 1
        logp, cache = _step(llm, embed(tok)[:, None].to(emb.dtype), mask, pos, cache, g)
        logp = _fuse(logp, hyps, ngram, ngram_weight)
    return [(h, float(s)) for h, s in zip(hyps, scores)]


def beam_search(
    llm,
    ctx: List[torch.Tensor],
    eos_id: int,
    max_new_tokens: int,
    beam_size: int,
    length_penalty: float = 1.0,
    g: Optional[torch.Tensor] = None,
    ngram=None,
    ngram_weight: float = 0.0,
) -> List[Tuple[List[int], float]]:
    """Beam search, all utterances' beams in one batch of B*K sequences sharing one KV cache.

    A finished beam can only be continued by eos at no cost, so it keeps its score and place.
    The best final hypothesis maximises score / length ** length_penalty (length counts eos).
    """
    b, k = len(ctx), beam_size
    emb, mask, pos = _left_pad(ctx, llm.get_input_embeddings().weight.dtype)
    logp, cache = _step(llm, emb, mask, pos, None, g)
    logp = _fuse(logp, [[]] * b, ngram, ngram_weight)
    v = logp.shape[-1]
    k = min(k, v)
    scores, tok = logp.topk(k, dim=-1)  # (B, K)
    scores, tok = scores.reshape(-1), tok.reshape(-1)
    cache.batch_repeat_interleave(k)
    mask, pos = mask.repeat_interleave(k, 0), pos.repeat_interleave(k, 0)
    gk = g.repeat_interleave(k, 0) if g is not None else None
    seqs = tok[:, None]
    done = tok == eos_id
    lengths = torch.ones(b * k, device=tok.device)
    embed = llm.get_input_embeddings()
    base = (torch.arange(b, device=tok.device) * k)[:, None]
    for _ in range(max_new_tokens - 1):
        if done.all():
            break
        mask = torch.cat([mask, mask.new_ones(b * k, 1)], 1)
        pos = pos[:, -1:] + 1
        logp, cache = _step(llm, embed(seqs[:, -1])[:, None].to(emb.dtype), mask, pos, cache, gk)
        logp = _fuse(logp, seqs.tolist() if ngram is not None else None, ngram, ngram_weight)
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, eos_id] = 0.0
        logp = torch.where(done[:, None], frozen, logp)
        cand = (scores[:, None] + logp).view(b, k * v)
        scores, idx = cand.topk(k, dim=-1)
        src = (base + idx // v).reshape(-1)
        tok = (idx % v).reshape(-1)
        scores = scores.reshape(-1)
        lengths = lengths[src] + (~done[src]).float()
        done = done[src] | (tok == eos_id)
        seqs = torch.cat([seqs[src], tok[:, None]], 1)
        cache.reorder_cache(src)
        mask, pos = mask[src], pos[src]
    final = (scores / lengths.pow(length_penalty)).view(b, k)
    best = final.argmax(-1)
    out = []
    for i in range(b):
        j = i * k + int(best[i])
        ids = [int(t) for t in seqs[j].tolist()]
        if eos_id in ids:
            ids = ids[: ids.index(eos_id)]
        out.append((ids, float(scores[j])))
    return out
