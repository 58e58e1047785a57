"""The mixture math of HDMoLE layers, run for several layers at once when they read the same input.

Linears such as the q, k and v projections of an attention block (or the gate and up
projections of an MLP) are called one after the other on the same tensor. Their routers and
their experts' A matrices can then run as one matmul over the concatenated weights, the routing
(softmax, hierarchical combination, threshold / top-k) as one pass over the stacked logits
(tokens, layers, experts), and only each layer's B as its own matmul. Each layer's output is
what ``HDMoLELinear.mixture`` gives it alone (its own router, threshold and experts); only the
number of kernel calls changes, which dominates at the demo's sizes (short sequences, small
widths).

``stacked_mixtures(layers, xt, lead)`` is that computation; a single layer runs it as a group of
one (its router and A then share one matmul). ``group_shared_inputs(model, groups)`` ties the
sibling layers named in ``groups`` (by default q/k/v and gate/up, the names of Qwen2, Llama and
Whisper blocks) into a ``SharedInputGroup``: the first member called on a new input computes all
members and keeps the others' results; a member then called on that same tensor (the same object,
not modified in place since, in the same grad mode) takes its result, and a member called on any
other input computes alone. A wrong grouping can thus only cost time, never change an output.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from espnet_hdmole.layers.routing import combine_routers, threshold_weights, topk_weights

DEFAULT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# settings that must agree for layers to be routed together
_SHARED = ("in_features", "num_experts", "num_domains", "experts_per_domain", "rank", "scaling", "temperature",
           "global_router", "combine", "activation", "top_k", "tau_max", "output_scale")


def _packed(layers: Sequence) -> Dict[str, torch.Tensor]:
    """The group's parameters in the layout the mixture reads: ``in`` the routers' and the A's
    weights as one (G*N + G*N*r, d_in) matrix, ``bias`` the routers' biases (G, N), ``B`` each
    layer's B as (d_out, N*r), ``theta`` the thresholds (G, 1) and ``mix`` the mix logits (G, 1)
    where the layers have them. Built anew while autograd records (training); otherwise
    (validation, decoding) kept on the first layer and built again only when one of the
    parameters changes (another version, storage or dtype: an optimiser step, a loaded state)."""
    first = layers[0]
    params = [p for m in layers for p in (m.router.weight, m.router.bias, m.lora_A, m.lora_B,
                                         getattr(m, "threshold", None), getattr(m, "mix_logit", None))
              if p is not None]
    keep = not (torch.is_grad_enabled() and any(p.requires_grad for p in params))
    if keep:
        key = (torch.is_inference_mode_enabled(),) + tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        kept = first.__dict__.get("_packed_kept", {}).get(tuple(map(id, layers)))
        if kept is not None and kept[0] == key:
            return kept[1]
    n, r, d = first.num_experts, first.rank, first.in_features
    packed = {
        "in": torch.cat([m.router.weight for m in layers] + [m.lora_A.reshape(n * r, d) for m in layers]),
        "bias": torch.stack([m.router.bias for m in layers]),
        "B": [m.lora_B.permute(1, 0, 2).reshape(m.out_features, n * r) for m in layers],
    }
    if first.activation == "threshold":
        packed["theta"] = torch.stack([m.threshold for m in layers]).unsqueeze(-1)
    if first.combine == "mix":
        packed["mix"] = torch.stack([m.mix_logit for m in layers]).unsqueeze(-1)
    if keep:
        first.__dict__.setdefault("_packed_kept", {})[tuple(map(id, layers))] = (key, packed)
    return packed


def stacked_routing(layers: Sequence, logits: torch.Tensor, xt: torch.Tensor, lead: torch.Size,
                    packed: Optional[Dict[str, torch.Tensor]] = None):
    """Routing of G layers from their router logits (T, G, N): returns (w, p, local, active, tau),
    each (T, G, N) (active: None for dense; tau: (G, 1) for 'threshold', (T, G, 1) for
    'token_threshold', else None). ``packed``: ``_packed(layers)`` when the caller has it."""
    first = layers[0]
    packed = _packed(layers) if packed is None else packed
    local = torch.softmax(logits if first.temperature == 1.0 else logits / first.temperature, dim=-1)
    if first.combine == "none":
        p = local
    else:  # the utterance's posterior broadcast over its tokens: (B, 1, 1, D) against (B, T/B, G, N)
        g = first._utterance_posterior(lead, local.dtype)
        (t, grp, n), b = local.shape, g.shape[0]
        p = combine_routers(local.view(b, t // max(b, 1), grp, n), g[:, None, None], first.combine,
                            first.experts_per_domain, packed.get("mix")).view(t, grp, n)
    tau, active = None, None
    if first.activation == "threshold":
        tau = first.tau_max * torch.sigmoid(packed["theta"])
        w, active = threshold_weights(p, tau)
    elif first.activation == "token_threshold":
        theta = torch.stack([m.threshold_proj(xt) for m in layers], dim=1)  # (T, G, 1)
        tau = first.tau_max * torch.sigmoid(theta)
        w, active = threshold_weights(p, tau)
    elif first.activation == "topk":
        w, active = topk_weights(p, first.top_k)
    else:
        w = p
    return w, p, local, active, tau


def stacked_mixtures(layers: Sequence, xt: torch.Tensor, lead: torch.Size) -> List[torch.Tensor]:
    """Each layer's ``c * sum_i w_i E_i(x)`` for the same flattened tokens xt (T, d_in); records
    each layer's routing (``_last``) and load-balancing loss as ``HDMoLELinear.mixture`` does."""
    first = layers[0]
    g, t, n, r, d = len(layers), xt.shape[0], first.num_experts, first.rank, first.in_features
    packed = _packed(layers)
    if isinstance(first.lora_dropout, torch.nn.Identity):  # routers and A's in one matmul
        out = F.linear(xt, packed["in"])
        logits = out[:, :g * n].unflatten(1, (g, n)) + packed["bias"]
        z = out[:, g * n:].unflatten(1, (g, n, r))
    else:  # (groups of one only: each layer draws its own dropout)
        logits = first.router(xt).unsqueeze(1)
        z = F.linear(first.lora_dropout(xt), first.lora_A.reshape(n * r, d)).view(t, 1, n, r)
    w, p, local, active, tau = stacked_routing(layers, logits, xt, lead, packed)
    scale = first.scaling
    if first.output_scale == "lora":
        scale = scale * (float(n) if active is None else active.sum(dim=-1, keepdim=True).to(xt.dtype))
    z = z * (w * scale).unsqueeze(-1).to(z.dtype)  # (T, G, N, r): each expert's input, weighted

    deltas = []
    for j, m in enumerate(layers):
        deltas.append(F.linear(z[:, j].reshape(t, n * r), packed["B"][j]))
        last = {"p": p[:, j].detach(), "w": w[:, j].detach(), "lead": lead, "kinds": None}
        if active is not None:
            last["active"] = active[:, j]
        if tau is not None:
            last["tau"] = (tau[j, 0] if tau.dim() == 2 else tau[:, j]).detach()
        aux = None
        if m.training and m.lb_weight > 0:
            aux = m.lb_weight * m.load_balancing_loss(local[:, j], w[:, j] if active is None else active[:, j])
        # plain attributes: set directly (nn.Module.__setattr__ costs ~10 us a call)
        m.__dict__.update(_last=last, _aux_loss=aux)
    return deltas


class SharedInputGroup:
    """Layers called one after another on the same input tensor, computed together (see module
    docstring). Not a module: it holds no parameters and leaves state dicts unchanged."""

    def __init__(self, layers: Sequence):
        self.layers = list(layers)
        self._key = None
        self._pending = {}

    def delta(self, layer, x: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        key = (x._version, torch.is_grad_enabled(), layer.training)
        if self._key is not None and self._key[0] is x and self._key[1:] == key and layer in self._pending:
            out = self._pending.pop(layer)
            if not self._pending:
                self._key = None  # every member served: drop the references
            return out
        xt = x.reshape(-1, layer.in_features).to(layer.lora_A.dtype)
        if any(m.training != layer.training for m in self.layers):
            self._key, self._pending = None, {}
            return stacked_mixtures([layer], xt, lead)[0]
        deltas = stacked_mixtures(self.layers, xt, lead)
        self._pending = {m: dm for m, dm in zip(self.layers, deltas) if m is not layer}
        self._key = (x,) + key if self._pending else None
        return deltas[self.layers.index(layer)]


def _can_share(layers: Sequence) -> bool:
    first = layers[0]
    return (all(isinstance(m.lora_dropout, torch.nn.Identity) for m in layers)
            and all(getattr(m, k) == getattr(first, k) for m in layers for k in _SHARED)
            and len({(m.lora_A.dtype, m.lora_A.device) for m in layers}) == 1)


def group_shared_inputs(model: torch.nn.Module, groups: Optional[Sequence[Sequence[str]]] = None) -> int:
    """Tie, under every module, the HDMoLE children named in one entry of ``groups`` (at least two
    present, with the same settings and no dropout) into a SharedInputGroup. Returns the number of
    groups made."""
    from espnet_hdmole.layers.hdmole_linear import HDMoLELinear

    groups = DEFAULT_GROUPS if groups is None else groups
    made = 0
    for parent in model.modules():
        for names in groups:
            members = [getattr(parent, n, None) for n in names]
            members = [m for m in members if isinstance(m, HDMoLELinear)]
            if len(members) >= 2 and _can_share(members):
                group = SharedInputGroup(members)
                for m in members:
                    m._shared_input_group = group
                made += 1
    return made
