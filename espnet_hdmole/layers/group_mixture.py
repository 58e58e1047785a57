"""The adapter path of HDMoLE layers that read the same input, as one autograd node.

For G layers (a ``SharedInputGroup`` of espnet_hdmole.layers.shared_input, or one layer alone),
from the flattened tokens x (T, d_in):

    [logits | z] = x [routers ; A's]^T             one matmul for every router and expert A
    w            = routing(logits + b, g, theta)    softmax, combine, activation: ``group_routing``
    delta_j      = (z_j * c w_j) B_j^T              per layer; c = alpha / r (times the experts in
                                                    use for output_scale 'lora')

``group_routing`` is the routing's one implementation: plain tensor operations, so that autograd
can run through it (``HDMoLELinear.route``). ``GroupMixture`` runs it, with the matmuls, without
recording, and its backward is written out from the vector-Jacobian products of
espnet_hdmole.layers.routing: where autograd would record some forty small operations per group
(each costing microseconds of dispatch on tensors of a few thousand elements), a group is one
node. At the demo's sizes (a few hundred tokens, 9 experts of rank 2) those small operations, not
the matmuls, set the time of a training step (benchmarks/bench_llm_asr.py). The backward is
checked against autograd through the same forward (tests/test_group_mixture.py); it is not
itself differentiable (no double backward).
"""
from typing import Any, Dict, Optional, Sequence

import torch

from espnet_hdmole.layers.routing import (combine_backward, combine_routers, expand_to_experts,
                                          normalised_weights_backward, threshold_weights, topk_weights)


def layer_parameters(layer) -> list:
    """The adapter parameters ``GroupMixture`` reads, in the order its backward returns their
    gradients: router weight and bias, A, B, then the threshold and the mix logit where present."""
    return [p for p in (layer.router.weight, layer.router.bias, layer.lora_A, layer.lora_B,
                        getattr(layer, "threshold", None), getattr(layer, "mix_logit", None)) if p is not None]


def packed_weights(layers: Sequence, keep: bool) -> Dict[str, torch.Tensor]:
    """The group's parameters in the layout the mixture reads: ``in`` the routers' and the A's
    weights as one (G*N + G*N*r, d_in) matrix, ``bias`` the routers' biases (G, N, 1), ``B`` each
    layer's B times alpha / r, as (d_out, N*r), ``theta`` the thresholds (G, 1, 1) and ``mix``
    the mix logits (G, 1, 1, 1) where the layers have them. With ``keep`` (no autograd:
    validation, decoding) they are kept on the first layer and built again only when one of the
    parameters changes (another version, storage or dtype: an optimiser step, a loaded state);
    otherwise built anew."""
    first = layers[0]
    if keep:
        params = [p for m in layers for p in layer_parameters(m)]
        key = (torch.is_inference_mode_enabled(),) + tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        kept = first.__dict__.get("_packed_kept", {}).get(tuple(map(id, layers)))
        if kept is not None and kept[0] == key:
            return kept[1]
    n, r, d = first.num_experts, first.rank, first.in_features
    with torch.no_grad():
        packed = {
            "in": torch.cat([m.router.weight for m in layers] + [m.lora_A.reshape(n * r, d) for m in layers]),
            "bias": torch.stack([m.router.bias for m in layers]).unsqueeze(-1),
            "B": [m.lora_B.permute(1, 0, 2).reshape(m.out_features, n * r).mul_(first.scaling) for m in layers],
        }
        if first.activation == "threshold":
            packed["theta"] = torch.stack([m.threshold for m in layers]).view(-1, 1, 1)
        if first.combine == "mix":
            packed["mix"] = torch.stack([m.mix_logit for m in layers]).view(-1, 1, 1, 1)
    if keep:
        first.__dict__.setdefault("_packed_kept", {})[tuple(map(id, layers))] = (key, packed)
    return packed


def group_routing(first, logits: torch.Tensor, g: Optional[torch.Tensor], theta: Optional[torch.Tensor],
                  mix_logit: Optional[torch.Tensor], need_local: bool = False) -> Dict[str, Any]:
    """Routing of G layers with ``first``'s settings from their router logits (G, N, T), bias
    included: experts first, tokens last, so that every sum over the experts runs along
    contiguous tokens (over a last dimension of 9, PyTorch's CPU softmax and sums are ~10x
    slower). ``g``: the domain posterior (B, D) (None without a global router), the T tokens
    being B utterances' in order; ``theta``: the thresholds (G, 1, 1) for 'threshold', (G, 1, T)
    for 'token_threshold'; ``mix_logit``: (G, 1, 1, 1) for combine 'mix'; ``need_local``: compute
    the local router's softmax even where the combination does not need it.

    Returns {"p", "w", "active", "norm", "tau", "mult", "local", "ge", "share"}: the combined
    probabilities and the weights (G, N, T), the active experts and the weights' normaliser
    (None for dense), tau (None without a threshold), the output scale's multiplier besides
    alpha / r (1, N for dense 'lora', or the experts in use (G, 1, T)), the local router's
    softmax (None where not computed), the expanded posterior (1, N, B, 1) and the mix share."""
    grp, n, t = logits.shape
    if first.temperature != 1.0:
        logits = logits / first.temperature
    ge = share = None
    if first.combine == "none":
        p, local = combine_routers(logits, None, "none", 1, dim=1)
    else:  # the utterance's posterior broadcast over its tokens: (1, N, B, 1) against (G, N, B, T/B)
        b = g.shape[0]
        ge = expand_to_experts(g, first.experts_per_domain).t().reshape(1, n, b, 1)
        share = torch.sigmoid(mix_logit) if first.combine == "mix" else None
        p, local = combine_routers(logits.view(grp, n, b, t // max(b, 1)), ge, first.combine,
                                   first.experts_per_domain, share, dim=1, need_local=need_local)
        p, local = p.view(grp, n, t), None if local is None else local.view(grp, n, t)
    tau = active = norm = None
    if first.activation in ("threshold", "token_threshold"):
        tau = first.tau_max * torch.sigmoid(theta)
        w, active, norm = threshold_weights(p, tau, dim=1)
    elif first.activation == "topk":
        w, active, norm = topk_weights(p, first.top_k, dim=1)
    else:
        w = p
    mult = 1.0
    if first.output_scale == "lora":
        mult = float(n) if active is None else active.sum(dim=1, keepdim=True).to(w.dtype)
    return dict(p=p, w=w, active=active, norm=norm, tau=tau, mult=mult, local=local, ge=ge, share=share)


class GroupMixture(torch.autograd.Function):
    """``GroupMixture.apply(layers, keep, x, x_experts, g, token_theta, need_local, *params)`` ->
    (delta_1 .. delta_G, local, routing): each layer's c * sum_i w_i E_i(x) (T, d_out_j); the
    local router's softmax (G, N, T) where ``need_local`` or the combination computes it (else
    None), differentiable (the load-balancing loss reads it); and the routing {"p", "w",
    "active", "tau"} of ``group_routing``, not differentiable (for the statistics).

    ``x``: the tokens (T, d_in) the routers read; ``x_experts``: what the experts read when it
    differs (dropout), else None (one matmul for both). ``g``: the domain posterior (B, D) or
    None; ``token_theta``: (G, 1, T) for 'token_threshold', else None; ``params``:
    ``layer_parameters`` of each layer in turn; ``keep``: see ``packed_weights``.
    """

    @staticmethod
    def forward(ctx, layers, keep, x, x_experts, g, token_theta, need_local, *params):
        first = layers[0]
        grp, n, r = len(layers), first.num_experts, first.rank
        t, gn = x.shape[0], len(layers) * first.num_experts
        packed = packed_weights(layers, keep)
        w_in = packed["in"]
        if x_experts is None:  # (G*N + G*N*r, T): experts first
            out = w_in.mm(x.t())
            logits, z = out[:gn], out[gn:]
        else:
            logits, z = w_in[:gn].mm(x.t()), w_in[gn:].mm(x_experts.t())
        logits = logits.view(grp, n, t) + packed["bias"]
        theta = token_theta if first.activation == "token_threshold" else packed.get("theta")
        rt = group_routing(first, logits, g, theta, packed.get("mix"), need_local)
        ws = rt["w"] if isinstance(rt["mult"], float) and rt["mult"] == 1.0 else rt["w"] * rt["mult"]
        z = z.view(grp, n, r, t)
        zw = z * ws.unsqueeze(2)  # (G, N, r, T): each expert's input, weighted
        deltas = [zw[j].view(n * r, t).t().mm(packed["B"][j].t()) for j in range(grp)]

        ctx.set_materialize_grads(False)
        local = rt["local"]  # an output: saved as one (on ctx it would make a reference cycle)
        ctx.layers, ctx.packed, ctx.z, ctx.zw, ctx.logits = layers, packed, z, zw, logits
        ctx.ws = None if ws is local else ws
        ctx.rt = {k: v for k, v in rt.items() if v is not local or local is None}  # (p, w: local itself for 'none')
        ctx.save_for_backward(x, x_experts, g, local)
        routing = {k: rt[k] for k in ("p", "w", "active", "tau") if rt[k] is not None}
        if first.activation == "threshold":
            routing["tau"] = routing["tau"].view(grp)  # one per layer
        return (*deltas, local, routing)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        layers, packed, z, zw, ws = ctx.layers, ctx.packed, ctx.z, ctx.zw, ctx.ws
        x, x_experts, g, local = ctx.saved_tensors
        ws = local if ws is None else ws
        rt = dict(ctx.rt)
        for k in ("p", "w"):
            rt.setdefault(k, local)
        first = layers[0]
        grp, n, r, d = len(layers), first.num_experts, first.rank, first.in_features
        t, gn = x.shape[0], grp * n
        need = ctx.needs_input_grad  # layers, keep, x, x_experts, g, token_theta, need_local, *params
        per_layer = len(layer_parameters(first))
        need_params = any(need[7:])

        # the B matmuls (alpha / r is in the packed B): d zw (G, N, r, T), and each B's gradient
        dzw, d_b = [], []
        for j, dd in enumerate(grads[:grp]):
            if dd is None:
                dzw.append(zw.new_zeros(n * r, t))
                d_b.append(None)
                continue
            dzw.append(packed["B"][j].t().mm(dd.t()))
            d_b.append(dd.t().mm(zw[j].view(n * r, t).t()).mul_(first.scaling).view(-1, n, r).permute(1, 0, 2)
                       if need[7 + j * per_layer + 3] else None)
        dzw = dzw[0].view(1, n, r, t) if grp == 1 else torch.stack(dzw).view(grp, n, r, t)
        dz = dzw * ws.unsqueeze(2)
        dw = (dzw * z).sum(dim=2)
        if not (isinstance(rt["mult"], float) and rt["mult"] == 1.0):
            dw = dw * rt["mult"]

        # the routing, backwards: activation, combination and softmax
        active, tau, p = rt["active"], rt["tau"], rt["p"]
        dp = dw if active is None else normalised_weights_backward(dw, rt["w"], active, rt["norm"], dim=1)
        d_theta = d_tok = None
        if tau is not None:  # tau = tau_max * sigmoid(theta): dtau/dtheta = tau * (1 - tau / tau_max)
            if first.activation == "threshold":
                d_theta = dp.sum(dim=(1, 2), keepdim=True) * (tau * (tau / first.tau_max - 1.0))  # (G, 1, 1)
            else:
                d_tok = dp.sum(dim=1, keepdim=True) * (tau * (tau / first.tau_max - 1.0))  # (G, 1, T)
        d_share = dg = None
        if first.combine == "none":
            dlogits, _, _ = combine_backward(dp, p, None, None, "none", 1, dim=1)
        else:
            b = g.shape[0]
            shape = (grp, n, b, t // max(b, 1))
            need_share = first.combine == "mix" and any(need[7 + (j + 1) * per_layer - 1] for j in range(grp))
            loc = local
            if first.combine == "product" and need[4] and loc is None:
                loc = torch.softmax(ctx.logits if first.temperature == 1.0 else ctx.logits / first.temperature, 1)
            dlogits, dge, dshare = combine_backward(
                dp.view(shape), p.view(shape), None if loc is None else loc.view(shape), rt["ge"], first.combine,
                first.experts_per_domain, rt["share"], dim=1, need_ge=need[4], need_share=need_share)
            dlogits = dlogits.view(grp, n, t)
            if dge is not None:  # (G, N, B, T/B) -> (B, D): over the layers, the utterance's tokens, a domain's experts
                dg = dge.sum(dim=(0, 3)).t().reshape(b, -1, first.experts_per_domain).sum(dim=-1)
            if dshare is not None:
                share = rt["share"]
                d_share = dshare.sum(dim=(1, 2, 3), keepdim=True) * share * (1.0 - share)  # (G, 1, 1, 1)
        if grads[grp] is not None:  # the load-balancing loss's gradient of the local softmax
            dlogits = dlogits + torch._softmax_backward_data(grads[grp], local, 1, local.dtype)
        if first.temperature != 1.0:
            dlogits = dlogits / first.temperature

        # the first matmul
        dx = dxe = d_in = None
        w_in = packed["in"]
        if x_experts is None:
            dout = torch.cat([dlogits.view(gn, t), dz.view(gn * r, t)])
            if need_params:
                d_in = dout.mm(x)
            if need[2]:
                dx = dout.t().mm(w_in)
        else:
            dz = dz.view(gn * r, t)
            if need_params:
                d_in = torch.cat([dlogits.view(gn, t).mm(x), dz.mm(x_experts)])
            if need[2]:
                dx = dlogits.view(gn, t).t().mm(w_in[:gn])
            if need[3]:
                dxe = dz.t().mm(w_in[gn:])

        out = [None, None, dx, dxe, dg, d_tok, None]
        if not need_params:
            return tuple(out + [None] * (len(need) - 7))
        d_bias = dlogits.sum(dim=2)
        for j in range(grp):
            out += [d_in[j * n:(j + 1) * n], d_bias[j],
                    d_in[gn + j * n * r:gn + (j + 1) * n * r].view(n, r, d), d_b[j]]
            if first.activation == "threshold":
                out.append(d_theta[j].view(()))
            if first.combine == "mix":
                out.append(None if d_share is None else d_share[j].view(()))
        return tuple(out)


class LastRouting:
    """One layer's routing in its last forward, read like a dict: "p", "w" (T, N), "active" (T, N)
    and "tau" (a scalar, or (T, 1) per token) where the activation has them, "lead" (the input's
    leading dims) and "kinds" (set by ``HDMoLELinear.mark_positions``, else None). The layer's
    slice of its group's stacked routing is taken, detached, when first read (a training step
    reads few of them)."""

    __slots__ = ("_routing", "_j", "_got")

    def __init__(self, routing: Dict[str, torch.Tensor], j: int, lead: torch.Size):
        self._routing, self._j, self._got = routing, j, {"lead": lead, "kinds": None}

    def __getitem__(self, key: str):
        got = self._got
        if key not in got:
            v = self._routing[key][self._j]  # KeyError where the activation has no such thing
            # (N, T) -> (T, N); a token threshold (1, T) -> (T, 1); a layer's threshold is a scalar
            got[key] = (v if v.dim() == 0 else v.t().contiguous()).detach()
        return got[key]

    def __setitem__(self, key: str, value) -> None:
        self._got[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self._got or key in self._routing

    def get(self, key: str, default=None):
        return self[key] if key in self else default

    def group_slot(self):
        """(the group's routing {"p", "w" (G, N, T), "active", "tau"}, this layer's index in it)."""
        return self._routing, self._j

    def tau_layout(self) -> Optional[str]:
        """'layer' (one threshold per layer), 'token' (one per token) or None (no threshold)."""
        tau = self._routing.get("tau")
        return None if tau is None else ("layer" if tau.dim() == 1 else "token")
