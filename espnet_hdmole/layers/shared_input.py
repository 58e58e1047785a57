"""The mixture math of HDMoLE layers, run for several layers at once when they read the same input.

Linears such as the q, k and v projections of an attention block (or the gate and up
projections of an MLP) are called one after the other on the same tensor. Their routers and
their experts' A matrices can then run as one matmul over the concatenated weights, the routing
(softmax, hierarchical combination, threshold / top-k) as one pass over the stacked logits
(tokens, layers, experts), and only each layer's B as its own matmul. Each layer's output is
what ``stacked_mixtures([layer], ...)`` gives it alone (its own router, threshold and experts); only the
number of kernel calls changes, which dominates at the demo's sizes (short sequences, small
widths).

``stacked_mixtures(layers, xt, lead)`` is that computation; a single layer runs it as a group of
one (its router and A then share one matmul). ``group_shared_inputs(model, groups)`` ties the
sibling layers named in ``groups`` (by default q/k/v and gate/up, the names of Qwen2, Llama and
Whisper blocks) into a ``SharedInputGroup``: the first member called on a new input computes all
members and keeps the others' results; a member then called on that same tensor (the same object,
not modified in place since, in the same grad mode, training mode and autocast state) takes its
result, and a member called on any other input computes alone. A wrong grouping can thus only
cost time, never change an output.
"""
from typing import List, Optional, Sequence, Tuple

import torch

from espnet_hdmole.layers.group_mixture import (GroupMixture, LastRouting, base_in_node, base_outputs,
                                                layer_parameters, mixture_forward)
from espnet_hdmole.layers.precision import autocast_off, autocast_on

DEFAULT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# settings that must agree for layers to be routed together
_SHARED = ("in_features", "num_experts", "num_domains", "experts_per_domain", "rank", "scaling", "temperature",
           "global_router", "combine", "activation", "top_k", "tau_max", "output_scale")


def stacked_mixtures(layers: Sequence, xt: torch.Tensor, lead: torch.Size, with_base: bool = False) -> List:
    """Each layer's ``c * sum_i w_i E_i(x)`` for the same flattened tokens xt (T, d_in), as one
    autograd node (espnet_hdmole.layers.group_mixture); records each layer's routing (``_last``)
    and load-balancing loss. Where nothing needs a gradient, a delta comes as its factors (a, b),
    delta = a b (``mixture_forward``). With ``with_base`` (where ``group_mixture.base_in_node``
    allows it) each layer's whole output comes instead (T, d_out): its frozen base linear plus its
    delta, added by the base output's own matmul (``group_mixture.base_outputs``)."""
    first = layers[0]
    g = first._utterance_posterior(lead, xt.dtype)
    x_experts = None if isinstance(first.lora_dropout, torch.nn.Identity) else first.lora_dropout(xt)  # (groups of one)
    token_theta = (torch.stack([m.threshold_proj(xt) for m in layers]).transpose(1, 2)  # (G, 1, T)
                   if first.activation == "token_threshold" else None)
    need_local = any(m.training and m.lb_weight > 0 for m in layers)
    params = [p for m in layers for p in layer_parameters(m)] if torch.is_grad_enabled() else []
    if any(v is not None and v.requires_grad for v in params + [xt, x_experts, g, token_theta]):
        *deltas, local, routing = GroupMixture.apply(layers, xt, x_experts, g, token_theta, need_local, with_base,
                                                     *params)
    else:  # nothing needs a gradient (validation, decoding)
        deltas, local, routing, _ = mixture_forward(layers, xt, x_experts, g, token_theta, need_local)
        if with_base:
            deltas = base_outputs(layers, xt, deltas)
    for j, m in enumerate(layers):
        aux = None
        if need_local and m.training and m.lb_weight > 0:
            dispatch = routing["w" if "active" not in routing else "active"][j].t()
            aux = m.lb_weight * m.load_balancing_loss(local[j].t(), dispatch)
        # plain attributes: set directly (nn.Module.__setattr__ costs ~10 us a call)
        m.__dict__.update(_last=LastRouting(routing, j, lead), _aux_loss=aux)
    return deltas


def layer_outputs(layers: Sequence, x: torch.Tensor, lead: torch.Size) -> Tuple[List, bool]:
    """What each layer adds for its input x (..., d_in), from ``stacked_mixtures`` on the flattened
    tokens in the adapter's dtype with autocast off: ``(outputs, whole)``. ``whole`` is
    ``group_mixture.base_in_node``, decided once for the layers (before autocast is turned off):
    then each output is the layer's whole output (T, d_out), its base linear included; else its
    delta (T, d_out) in the adapter's dtype, for the layer to add to its base linear."""
    whole = base_in_node(layers, x)
    first = layers[0]
    with autocast_off(x.device.type):  # routing and experts in the adapter's dtype (float32)
        outs = stacked_mixtures(layers, x.reshape(-1, first.in_features).to(first.lora_A.dtype), lead, whole)
        if not whole:  # without autograd a delta comes as its factors
            outs = [o[0].mm(o[1]) if isinstance(o, tuple) else o for o in outs]
    return outs, whole


class SharedInputGroup:
    """Layers called one after another on the same input tensor, computed together (see module
    docstring). Not a module: it holds no parameters and leaves state dicts unchanged."""

    def __init__(self, layers: Sequence):
        self.layers = list(layers)
        self._key = None
        self._pending = {}

    def output(self, layer, x: torch.Tensor, lead: torch.Size):
        """``layer``'s ``(output, whole)`` for its input x, as ``layer_outputs`` gives it: computed
        for every member at the first call on x."""
        key = (x._version, torch.is_grad_enabled(), layer.training, autocast_on(x.device.type))
        if self._key is not None and self._key[0] is x and self._key[1:-1] == key and layer in self._pending:
            out = self._pending.pop(layer)
            whole = self._key[-1]
            if not self._pending:
                self._key = None  # every member served: drop the references
            return out, whole
        if any(m.training != layer.training for m in self.layers):
            self._key, self._pending = None, {}
            (out,), whole = layer_outputs([layer], x, lead)
            return out, whole
        outs, whole = layer_outputs(self.layers, x, lead)
        self._pending = {m: o for m, o in zip(self.layers, outs) if m is not layer}
        self._key = (x,) + key + (whole,) if self._pending else None
        return outs[self.layers.index(layer)], whole


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
