"""Routing pieces of HDMoLE: the utterance-level domain posterior, hierarchical combination
and expert activation rules.

The functions here work on probabilities with the N experts along one dimension (``dim``, the
last by default); expert ``i`` belongs to domain ``i // experts_per_domain``. Each rule has its
vector-Jacobian product beside it, for the hand-written backward of
espnet_hdmole.layers.group_mixture.
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
# (the posterior, {what expert_posterior derived from it}) for the innermost domain_posterior block
_DERIVED: contextvars.ContextVar[Optional[tuple]] = contextvars.ContextVar("hdmole_expert_posterior", default=None)


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
    token, derived = _POSTERIOR.set(g), _DERIVED.set((g, {}))
    try:
        yield g
    finally:
        _DERIVED.reset(derived)
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


def expert_posterior(g: torch.Tensor, experts_per_domain: int, log: bool) -> torch.Tensor:
    """The posterior g (B, D) expanded to the experts and laid out (1, N, B, 1) against routing
    laid out (layers, N, B, tokens per utterance), or its log (-inf where g is 0) with ``log``.
    Without autograd, and where g is the posterior of the innermost :func:`domain_posterior`
    block, it is computed once for the block: every HDMoLE layer of a forward reads the same."""
    derived = _DERIVED.get() if not torch.is_grad_enabled() else None
    key = (experts_per_domain, log, g._version)
    if derived is not None and derived[0] is g and key in derived[1]:
        return derived[1][key]
    b = g.shape[0]
    ge = expand_to_experts(g, experts_per_domain).t().reshape(1, -1, b, 1)
    ge = ge.log() if log else ge
    if derived is not None and derived[0] is g:
        derived[1][key] = ge
    return ge


def combine_routers(
    logits: torch.Tensor,
    ge: Optional[torch.Tensor],
    combine: str,
    experts_per_domain: int,
    mix_share: Optional[torch.Tensor] = None,
    dim: int = -1,
    need_local: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Hierarchical combination of the local router with the domain posterior.

    Args:
        logits: the local router's logits (temperature applied), the experts along ``dim``.
        ge: the domain posterior of each token's utterance expanded to the experts
            (:func:`expert_posterior`), in any shape that broadcasts against ``logits``; its log
            for 'product'; None for 'none'.
        combine: 'product': p_i ~ g_dom(i) * l_i, renormalised, with l = softmax(logits);
            computed as softmax(logits + log ge) (one softmax; log ge is -inf where g is 0);
            'mix': p = (1 - s) l + s ge / E (divided by E so that p stays on the simplex);
            'none': p = l.
        mix_share: s = sigmoid(mix logit), broadcasting against ``logits`` ('mix' only).
        need_local: also compute l for 'product' (the load-balancing loss reads it).

    Returns (p, l): l is None for 'product' unless ``need_local``, and ``p`` itself for 'none'.
    """
    if combine == "product":
        p = torch.softmax(logits + ge, dim=dim)
        return p, torch.softmax(logits, dim=dim) if need_local else None
    local = torch.softmax(logits, dim=dim)
    if combine == "none":
        return local, local
    if combine == "mix":
        return (1.0 - mix_share) * local + mix_share * ge / experts_per_domain, local
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


def combine_backward(dp: torch.Tensor, p: torch.Tensor, local: Optional[torch.Tensor], ge: Optional[torch.Tensor],
                     combine: str, experts_per_domain: int, mix_share: Optional[torch.Tensor] = None,
                     dim: int = -1, need_ge: bool = False, need_share: bool = False):
    """The vector-Jacobian product of :func:`combine_routers`: (dlogits, dge, dshare) for the
    gradient ``dp`` of its p. dge and dshare come unreduced (in dp's shape; the caller sums them to
    the shapes of ge and s) and only where asked for (else None); for 'product', ``ge`` is the
    log posterior, as combine_routers reads it, and dge (of the posterior itself) needs ``local``,
    the softmax of the logits."""
    if combine == "none":
        return torch._softmax_backward_data(dp, p, dim, p.dtype), None, None
    if combine == "product":  # p = softmax(logits + log ge)
        dlogits = torch._softmax_backward_data(dp, p, dim, p.dtype)
        dge = None
        if need_ge:  # p = q / sum(q), q = l * ge: dge = l / sum(q) * (dp - sum(dp * p))
            norm = (local * ge.exp()).sum(dim=dim, keepdim=True)
            dge = local / norm * (dp - (dp * p).sum(dim=dim, keepdim=True))
        return dlogits, dge, None
    if combine == "mix":
        dge = dp * (mix_share / experts_per_domain) if need_ge else None
        dshare = dp * (ge / experts_per_domain - local) if need_share else None
        return torch._softmax_backward_data(dp * (1.0 - mix_share), local, dim, local.dtype), dge, dshare
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


def threshold_weights(
    p: torch.Tensor, tau: torch.Tensor, eps: float = 1e-9, dim: int = -1
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic-threshold activation.

    Experts with p_i >= tau are active; their weights are (p_i - tau), renormalised, so the
    gradient reaches tau. ``tau`` is a scalar or a tensor that broadcasts against p, whose experts
    lie along ``dim``. Returns (weights, active mask, normaliser sum_i (p_i - tau) over the active).
    """
    active = p >= tau
    u = (p - tau).clamp_min(0.0)
    norm = u.sum(dim=dim, keepdim=True).clamp_min(eps)
    return u / norm, active, norm


def topk_weights(p: torch.Tensor, k: int, eps: float = 1e-9, dim: int = -1
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Static top-k activation: the k most probable experts, their probabilities renormalised.
    Returns (weights, active mask, normaliser)."""
    active = torch.zeros_like(p, dtype=torch.bool).scatter_(dim, p.topk(k, dim=dim).indices, True)
    u = p * active
    norm = u.sum(dim=dim, keepdim=True).clamp_min(eps)
    return u / norm, active, norm


def normalised_weights_backward(dw: torch.Tensor, w: torch.Tensor, active: torch.Tensor,
                                norm: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The vector-Jacobian product of :func:`threshold_weights` and :func:`topk_weights` with
    respect to p: w = u / sum(u), u = (p - tau) on the active experts (tau = 0 for top-k; the
    choice of experts is piecewise constant). The gradient of tau is minus its sum over the
    experts."""
    return (dw - (dw * w).sum(dim=dim, keepdim=True)) / norm * active  # (* a bool mask: ~2x faster than where)


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
