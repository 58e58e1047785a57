"""Routing pieces of HDMoLE: the utterance-level domain posterior, hierarchical combination
and expert activation rules.

Every function here works on probabilities laid out as (tokens, N) where N is the number of
experts; expert ``i`` belongs to domain ``i // experts_per_domain``.
"""
import contextlib
import contextvars
from typing import Iterator, Optional, Tuple

import torch

GLOBAL_ROUTERS = ("predicted", "oracle", "none")
# what a layer's input position holds, for routing statistics (padding is left out of them)
PAD, SPEECH, TEXT = 0, 1, 2
COMBINES = ("product", "mix", "none")
ACTIVATIONS = ("threshold", "token_threshold", "topk", "dense")

_POSTERIOR: contextvars.ContextVar[Optional[torch.Tensor]] = contextvars.ContextVar(
    "hdmole_domain_posterior", default=None
)


@contextlib.contextmanager
def domain_posterior(g: torch.Tensor) -> Iterator[torch.Tensor]:
    """Make the utterance-level domain posterior ``g`` visible to every HDMoLE layer.

    Args:
        g: (batch, num_domains) tensor, each row on the simplex (the accent-ID head's softmax
            for ``global_router: predicted``, or :func:`oracle_posterior` of the labels).

    The value is held in a context variable, so threads (e.g. DataParallel replicas) and
    nested calls each see their own posterior; it is removed when the block ends.
    """
    if not isinstance(g, torch.Tensor) or g.dim() != 2:
        raise ValueError(
            "domain_posterior expects a (batch, num_domains) tensor, got "
            f"{type(g).__name__}{tuple(g.shape) if isinstance(g, torch.Tensor) else ''}"
        )
    token = _POSTERIOR.set(g)
    try:
        yield g
    finally:
        _POSTERIOR.reset(token)


def current_domain_posterior() -> Optional[torch.Tensor]:
    """The posterior set by the innermost :func:`domain_posterior` block, or None."""
    return _POSTERIOR.get()


def oracle_posterior(labels: torch.Tensor, num_domains: int) -> torch.Tensor:
    """One-hot posteriors (batch, num_domains) from integer domain labels (batch,)."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_domains):
        raise ValueError(
            f"domain labels must lie in [0, {num_domains - 1}], got "
            f"min={int(labels.min())} max={int(labels.max())}"
        )
    return torch.nn.functional.one_hot(labels, num_domains).float()


def expand_to_experts(g: torch.Tensor, experts_per_domain: int) -> torch.Tensor:
    """(..., D) domain weights -> (..., D * E) weights, each expert taking its domain's value."""
    return g if experts_per_domain == 1 else g.repeat_interleave(experts_per_domain, dim=-1)


def combine_routers(
    local: torch.Tensor,
    g_tok: Optional[torch.Tensor],
    combine: str,
    experts_per_domain: int,
    mix_logit: Optional[torch.Tensor] = None,
    eps: float = 1e-9,
) -> torch.Tensor:
    """Hierarchical combination of the local router probabilities with the domain posterior.

    Args:
        local: (T, N) softmax of the local router (or any (..., N) layout).
        g_tok: (T, D) domain posterior of each token's utterance, or any shape that broadcasts
            against ``local`` once expanded to the experts (None when combine is 'none').
        combine: 'product': p_i ~ g_dom(i) * l_i, renormalised;
            'mix': p = (1 - s) l + s expand(g) / E, s = sigmoid(mix_logit)
            (divided by E so that p stays on the simplex);
            'none': p = l.
    """
    if combine == "none":
        return local
    ge = expand_to_experts(g_tok, experts_per_domain)
    if combine == "product":
        p = local * ge
        return p / p.sum(dim=-1, keepdim=True).clamp_min(eps)
    if combine == "mix":
        s = torch.sigmoid(mix_logit)
        return (1.0 - s) * local + s * ge / experts_per_domain
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


def threshold_weights(
    p: torch.Tensor, tau: torch.Tensor, eps: float = 1e-9
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dynamic-threshold activation.

    Experts with p_i >= tau are active; their weights are (p_i - tau), renormalised, so the
    gradient reaches tau. ``tau`` is a scalar or a (T, 1) tensor. Returns (weights, active mask).
    """
    active = p >= tau
    w = (p - tau) * active
    return w / w.sum(dim=-1, keepdim=True).clamp_min(eps), active


def topk_weights(p: torch.Tensor, k: int, eps: float = 1e-9) -> Tuple[torch.Tensor, torch.Tensor]:
    """Static top-k activation: the k most probable experts, their probabilities renormalised."""
    vals, idx = p.topk(k, dim=-1)
    w = torch.zeros_like(p).scatter(-1, idx, vals / vals.sum(dim=-1, keepdim=True).clamp_min(eps))
    active = torch.zeros_like(p, dtype=torch.bool).scatter(-1, idx, True)
    return w, active


def position_kinds(total: int, lengths: torch.Tensor, speech_start=0, speech_lengths=None) -> torch.Tensor:
    """(batch, total) position kinds, without a loop over the batch: positions from ``lengths`` on
    are PAD; of the others, ``speech_lengths`` positions from ``speech_start`` are SPEECH and the
    rest TEXT (all SPEECH when ``speech_lengths`` is None)."""
    pos = torch.arange(total, device=lengths.device)[None]
    if speech_lengths is None:
        inner = torch.full_like(pos, SPEECH)
    else:
        start = torch.as_tensor(speech_start, device=lengths.device).reshape(-1, 1)
        speech = (pos >= start) & (pos < start + speech_lengths.reshape(-1, 1))
        inner = torch.where(speech, SPEECH, TEXT)
    return torch.where(pos < lengths.reshape(-1, 1), inner, PAD)
