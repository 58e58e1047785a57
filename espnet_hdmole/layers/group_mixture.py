"""The adapter path of HDMoLE layers that read the same input, as one autograd node.

For G layers (a ``SharedInputGroup`` of espnet_hdmole.layers.shared_input, or one layer alone),
from the flattened tokens x (T, d_in):

    [logits | z] = x [routers ; c A's]^T            one matmul for every router and expert A
    w            = routing(logits + b, g, tau)      softmax, combine, activation: ``group_routing``
    delta_j      = (z_j * m w_j) B_j^T              per layer; c = alpha / r, m = 1 (or the experts
                                                    in use, for output_scale 'lora')

Everything is laid out experts first, tokens last, (G, N, T): every sum over the experts then runs
along contiguous tokens (over a last dimension of 9, PyTorch's CPU softmax and sums are ~10x
slower).

``group_routing`` is the routing's one implementation: plain tensor operations, so that autograd
can run through it (``HDMoLELinear.route``). ``mixture_forward`` runs it with the matmuls; where
nothing needs a gradient (validation, decoding) that is all. ``GroupMixture`` runs it without
recording, and its backward is written out from the vector-Jacobian products of
espnet_hdmole.layers.routing: where autograd would record some forty small operations per group
(each costing microseconds of dispatch on tensors of a few thousand elements), a group is one
node. At the demo's sizes (a few hundred tokens, 9 experts of rank 2) those small operations, not
the matmuls, set the time of a training step (benchmarks/bench_llm_asr.py). The backward is
checked against autograd through the same forward (tests/test_group_mixture.py); it is not
itself differentiable (no double backward).

The node also takes the layers' frozen base linears where it can (``base_in_node``): it returns
each layer's whole output, y_j = x W_j^T + b_j + delta_j, the delta added by the base output's own
matmul (``addmm_``, in ``base_outputs``), and its backward adds dy_j W_j to the input's gradient.
Outside the node each layer would record its base linear and the add of its delta, and autograd
would sum the input's gradient from every layer of the group: about 7% of a demo training step
(benchmarks/bench_llm_asr.py). Without autograd ``base_outputs`` does the same from
``mixture_forward``'s factors.
"""
import contextlib
import contextvars
from typing import Any, Dict, Iterator, Optional, Sequence

import torch

from espnet_hdmole.layers.routing import (combine_backward, combine_routers, expert_posterior,
                                          normalised_weights_backward, threshold_weights, topk_weights)


def layer_parameters(layer) -> list:
    """The adapter parameters ``GroupMixture`` reads, in the order its backward returns their
    gradients: router weight and bias, A, B, then the threshold and the mix logit where present.
    (Read from the modules' parameter dicts: ``Module.__getattr__`` costs a microsecond a name.)"""
    own, router = layer._parameters, layer._modules["router"]._parameters
    return [p for p in (router["weight"], router["bias"], own["lora_A"], own["lora_B"],
                        own.get("threshold"), own.get("mix_logit")) if p is not None]


# the packings made inside the innermost ``parameters_fixed`` block, by group
_FIXED: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("hdmole_fixed_packings", default=None)


@contextlib.contextmanager
def parameters_fixed() -> Iterator[None]:
    """A block in which no adapter parameter changes (a decoding: no optimiser, no loading): each
    group packs its parameters once, at its first call, instead of at every call (every generated
    token). Outside such a block the packing is made at every call: an optimiser may change the
    parameters in place without a trace (PyTorch's fused Adam does not advance their version
    counters), so no packing is kept from one call to the next."""
    token = _FIXED.set({})
    try:
        yield
    finally:
        _FIXED.reset(token)


def packed_weights(layers: Sequence, params: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, Any]:
    """The group's parameters in the layout the mixture reads: ``in`` the routers' weights and
    the A's times alpha / r as one (G*N + G*N*r, d_in) matrix, ``bias`` its bias column (the
    routers' biases, zeros for the A's), ``B`` each layer's B as (d_out, N*r), for 'threshold'
    ``tau`` (G, 1, 1) and ``minus_dtau`` minus its derivative by theta, for combine 'mix' ``mix``
    the mix logits (G, 1, 1, 1). ``params``: ``layer_parameters`` of each layer in turn, where
    the caller has them. Made anew at every call, except inside a ``parameters_fixed`` block."""
    fixed = _FIXED.get()
    group = tuple(map(id, layers))
    if fixed is not None and group in fixed:
        return fixed[group][1]
    first = layers[0]
    n, r, d = first.num_experts, first.rank, first.in_features
    gn = len(layers) * n
    with torch.no_grad():  # (a no-op inside GroupMixture)
        if params:  # router weight, bias, A, B, [threshold], [mix] of each layer
            per = len(params) // len(layers)
            params = [params[j * per:(j + 1) * per] for j in range(len(layers))]
        else:
            params = [layer_parameters(m) for m in layers]
        w_in = torch.cat([q[0] for q in params] + [q[2].reshape(n * r, d) for q in params])
        w_in[gn:].mul_(first.scaling)
        bias = torch.cat([q[1] for q in params] + [w_in.new_zeros(gn * r)]).unsqueeze(1)
        packed = {"in": w_in, "bias": bias,
                  "B": [q[3].reshape(-1, n * r) for q in params]}  # (d_out, N, r): a view
        if first.activation == "threshold":  # tau = tau_max * sigmoid(theta); d tau / d theta = tau (1 - sigmoid)
            sig = torch.sigmoid(torch.stack([q[4] for q in params]).view(-1, 1, 1))
            tau = sig * first.tau_max
            packed.update(tau=tau, minus_dtau=tau * (sig - 1.0))
        if first.combine == "mix":
            packed["mix"] = torch.stack([q[-1] for q in params]).view(-1, 1, 1, 1)
    if fixed is not None:
        fixed[group] = (layers, packed)  # (the layers held: their ids stay theirs while the block lasts)
    return packed


def group_routing(first, logits: torch.Tensor, g: Optional[torch.Tensor], tau: Optional[torch.Tensor],
                  mix_logit: Optional[torch.Tensor], need_local: bool = False) -> Dict[str, Any]:
    """Routing of G layers with ``first``'s settings from their router logits (G, N, T), bias
    included. ``g``: the domain posterior (B, D) (None without a global router), the T tokens
    being B utterances' in order; ``tau``: the thresholds (G, 1, 1), or (G, 1, T) for
    'token_threshold' (else None); ``mix_logit``: (G, 1, 1, 1) for combine 'mix';
    ``need_local``: compute the local router's softmax even where the combination does not.

    Returns {"p", "w", "active", "norm", "tau", "mult", "local", "ge", "share"}: the combined
    probabilities and the weights (G, N, T), the active experts and the weights' normaliser
    (None for dense), tau, the output scale's multiplier besides alpha / r (1, N for dense
    'lora', or the experts in use (G, 1, T)), the local router's softmax (None where not
    computed), the expanded posterior (``expert_posterior``: the log for 'product') and the mix
    share."""
    grp, n, t = logits.shape
    if first.temperature != 1.0:
        logits = logits / first.temperature
    ge = share = None
    if first.combine == "none":
        p, local = combine_routers(logits, None, "none", 1, dim=1)
    else:  # the utterance's posterior broadcast over its tokens: (1, N, B, 1) against (G, N, B, T/B)
        b = g.shape[0]
        ge = expert_posterior(g, first.experts_per_domain, log=first.combine == "product")
        share = torch.sigmoid(mix_logit) if first.combine == "mix" else None
        p, local = combine_routers(logits.view(grp, n, b, t // max(b, 1)), ge, first.combine,
                                   first.experts_per_domain, share, dim=1, need_local=need_local)
        p, local = p.view(grp, n, t), None if local is None else local.view(grp, n, t)
    active = norm = None
    if tau is not None:
        w, active, norm = threshold_weights(p, tau, dim=1)
    elif first.activation == "topk":
        w, active, norm = topk_weights(p, first.top_k, dim=1)
    else:
        w = p
    mult = 1.0
    if first.output_scale == "lora":
        mult = float(n) if active is None else active.sum(dim=1, keepdim=True).to(w.dtype)
    return dict(p=p, w=w, active=active, norm=norm, tau=tau, mult=mult, local=local, ge=ge, share=share)


def mixture_forward(layers: Sequence, x: torch.Tensor, x_experts: Optional[torch.Tensor],
                    g: Optional[torch.Tensor], token_theta: Optional[torch.Tensor], need_local: bool,
                    params: Optional[Sequence[torch.Tensor]] = None):
    """The group's mixture, as ``GroupMixture`` computes it (arguments as there), with nothing
    recorded: returns (deltas, local, routing, state), ``state`` what the backward reads. Each
    delta comes as its two factors (zw (T, N*r), B^T (N*r, d_out)), delta = zw B^T, for
    ``base_outputs`` to add their product to the base output in one matmul (``Tensor.addmm_``)."""
    first = layers[0]
    grp, n, r = len(layers), first.num_experts, first.rank
    t, gn = x.shape[0], grp * first.num_experts
    packed = packed_weights(layers, params)
    w_in = packed["in"]
    if x_experts is None:  # (G*N + G*N*r, T): experts first
        out = torch.addmm(packed["bias"], w_in, x.t())
        logits, z = out[:gn], out[gn:]
    else:
        logits, z = torch.addmm(packed["bias"][:gn], w_in[:gn], x.t()), w_in[gn:].mm(x_experts.t())
    logits = logits.view(grp, n, t)
    tau = first.tau_max * torch.sigmoid(token_theta) if token_theta is not None else packed.get("tau")
    rt = group_routing(first, logits, g, tau, packed.get("mix"), need_local)
    ws = rt["w"] if isinstance(rt["mult"], float) and rt["mult"] == 1.0 else rt["w"] * rt["mult"]
    z = z.view(grp, n, r, t)
    zw = z * ws.unsqueeze(2)  # (G, N, r, T): each expert's input, weighted
    zwt = zw.view(grp, n * r, t).transpose(1, 2)  # (G, T, N*r)
    deltas = [(zwt[j], b.t()) for j, b in enumerate(packed["B"])]
    routing = {k: rt[k] for k in ("p", "w", "active", "tau") if rt[k] is not None}
    if first.activation == "threshold":
        routing["tau"] = routing["tau"].view(grp)  # one per layer
    return deltas, rt["local"], routing, (packed, rt, z, zw, ws, logits)


def b_matmuls_backward(grads: Sequence[Optional[torch.Tensor]], bs: Sequence[torch.Tensor], zw: torch.Tensor,
                       rank: int, need_b: Sequence[bool]):
    """The backward of the G layers' B matmuls, delta_j = zw_j^T B_j^T: (d zw (G, N*r, T), zeros
    for a layer whose output got no gradient; each B's gradient (d_out, N, r), None where
    ``need_b`` says it is not needed). ``grads``: each layer's output gradient (T, d_out) or None;
    ``bs``: each B as (d_out, N*r); ``zw``: the weighted expert inputs (G, N*r, T)."""
    dzw, d_b = zw.new_empty(zw.shape), []
    for j, dd in enumerate(grads):
        if dd is None:
            dzw[j].zero_()
            d_b.append(None)
            continue
        torch.mm(bs[j].t(), dd.t(), out=dzw[j])
        # B's gradient as zw dd, transposed: (N*r, T) by (T, d_out) reads both operands along their rows,
        # about twice as fast on the CPU as dd^T zw^T (benchmarks: ~1.8 ms of a demo step)
        d_b.append(zw[j].mm(dd).t().view(dd.shape[1], -1, rank) if need_b[j] else None)
    return dzw, d_b


def base_in_node(layers: Sequence, x: torch.Tensor) -> bool:
    """Whether the group's mixture can compute its layers' base linears on ``x`` as well: every
    base weight and bias in the adapter's dtype, which is x's, and frozen where grad is enabled
    (the node gives them no gradient), and autocast off on x's device (under autocast the base runs
    in the autocast dtype, outside the node)."""
    dev = x.device.type
    if not torch.amp.is_autocast_available(dev) or torch.is_autocast_enabled(dev):  # (meta has no autocast)
        return False
    training = torch.is_grad_enabled()
    for m in layers:
        own = m._parameters
        w, b, dtype = own["weight"], own.get("bias"), own["lora_A"].dtype
        if w.dtype != dtype or x.dtype != dtype or (training and w.requires_grad) or (
                b is not None and (b.dtype != dtype or (training and b.requires_grad))):
            return False
    return True


def base_outputs(layers: Sequence, x: torch.Tensor, factors: Sequence) -> list:
    """Each layer's whole output (T, d_out_j) from the tokens x (T, d_in) and its delta's factors
    (a, b), delta = a b: the frozen base linear, the delta added in its output by one matmul."""
    out = []
    for m, (a, b) in zip(layers, factors):
        w, bias = m._parameters["weight"], m._parameters.get("bias")
        y = x.mm(w.t()) if bias is None else torch.addmm(bias, x, w.t())
        out.append(y.addmm_(a, b))
    return out


def add_base_input_grads(layers: Sequence, grads: Sequence[Optional[torch.Tensor]], dx: torch.Tensor) -> torch.Tensor:
    """``dx`` plus the gradient of the input through each layer's frozen base linear (in place)."""
    for m, dy in zip(layers, grads):
        if dy is not None:
            dx.addmm_(dy, m._parameters["weight"])
    return dx


# GroupMixture's arguments before the layers' parameters
NODE_ARGS = ("layers", "x", "x_experts", "g", "token_theta", "need_local", "with_base")
P0 = len(NODE_ARGS)


class GroupMixture(torch.autograd.Function):
    """``GroupMixture.apply(layers, x, x_experts, g, token_theta, need_local, with_base, *params)``
    -> (delta_1 .. delta_G, local, routing): each layer's c * sum_i w_i E_i(x) (T, d_out_j), or
    with ``with_base`` its whole output, the frozen base linear's included (``base_in_node``); the
    local router's softmax (G, N, T) where ``need_local`` or the combination computes it (else
    None), differentiable (the load-balancing loss reads it); and the routing {"p", "w",
    "active", "tau"} of ``group_routing``, not differentiable (for the statistics).

    ``x``: the tokens (T, d_in) the routers read; ``x_experts``: what the experts read when it
    differs (dropout), else None (one matmul for both). ``g``: the domain posterior (B, D) or
    None; ``token_theta``: (G, 1, T) for 'token_threshold', else None; ``params``:
    ``layer_parameters`` of each layer in turn.
    """

    @staticmethod
    def forward(ctx, layers, x, x_experts, g, token_theta, need_local, with_base, *params):
        factors, local, routing, (packed, rt, z, zw, ws, logits) = mixture_forward(
            layers, x, x_experts, g, token_theta, need_local, params)
        deltas = base_outputs(layers, x, factors) if with_base else [a.mm(b) for a, b in factors]
        ctx.set_materialize_grads(False)
        ctx.with_base = with_base
        # local is an output: saved as one (held on ctx it would make a reference cycle); p, w
        # and the weighted ws are local itself for combine 'none' with the dense activation
        ctx.layers, ctx.packed, ctx.z, ctx.zw, ctx.logits = layers, packed, z, zw, logits
        ctx.ws = None if ws is local else ws
        ctx.rt = {k: v for k, v in rt.items() if v is not local or local is None}
        ctx.save_for_backward(x, x_experts, g, local, token_theta)
        return (*deltas, local, routing)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        layers, packed, z, zw = ctx.layers, ctx.packed, ctx.z, ctx.zw
        x, x_experts, g, local, token_theta = ctx.saved_tensors
        ws = local if ctx.ws is None else ctx.ws
        rt = dict(ctx.rt)
        for k in ("p", "w"):
            rt.setdefault(k, local)
        first = layers[0]
        grp, n, r, d = len(layers), first.num_experts, first.rank, first.in_features
        t, gn = x.shape[0], grp * n
        need = ctx.needs_input_grad  # NODE_ARGS, then the layers' parameters
        per_layer = (len(need) - P0) // grp
        need_params = any(need[P0:])

        # the B matmuls: d zw (G, N, r, T), and each B's gradient
        dzw, d_b = b_matmuls_backward(grads[:grp], packed["B"], zw.view(grp, n * r, t), r,
                                      [need[P0 + j * per_layer + 3] for j in range(grp)])
        dzw = dzw.view(grp, n, r, t)
        dz = dzw * ws.unsqueeze(2)
        dw = (dzw * z).sum(dim=2)
        if not (isinstance(rt["mult"], float) and rt["mult"] == 1.0):
            dw = dw * rt["mult"]

        # the routing, backwards: activation, combination and softmax
        active, tau, p = rt["active"], rt["tau"], rt["p"]
        dp = dw if active is None else normalised_weights_backward(dw, rt["w"], active, rt["norm"], dim=1)
        d_theta = d_tok = None
        if tau is not None:  # tau = tau_max * sigmoid(theta); the gradient of tau is -sum(dp)
            if first.activation == "threshold":
                d_theta = dp.sum(dim=(1, 2), keepdim=True) * packed["minus_dtau"]  # (G, 1, 1)
            else:
                d_tok = -dp.sum(dim=1, keepdim=True) * tau * (1.0 - tau / first.tau_max)  # (G, 1, T)
        d_share = dg = None
        if first.combine == "none":
            dlogits, _, _ = combine_backward(dp, p, None, None, "none", 1, dim=1)
        else:
            b = g.shape[0]
            shape = (grp, n, b, t // max(b, 1))
            need_share = first.combine == "mix" and any(need[P0 + (j + 1) * per_layer - 1] for j in range(grp))
            loc = local
            if first.combine == "product" and need[3] and loc is None:
                loc = torch.softmax(ctx.logits if first.temperature == 1.0 else ctx.logits / first.temperature, 1)
            dlogits, dge, dshare = combine_backward(
                dp.view(shape), p.view(shape), None if loc is None else loc.view(shape), rt["ge"], first.combine,
                first.experts_per_domain, rt["share"], dim=1, need_ge=need[3], need_share=need_share)
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

        # the first matmul (its A rows carry alpha / r: so does the gradient of A)
        dx = dxe = d_in = None
        w_in = packed["in"]
        if x_experts is None:
            dout = torch.cat([dlogits.view(gn, t), dz.view(gn * r, t)])
            if need_params:
                d_in = dout.mm(x)
            if need[1]:
                dx = dout.t().mm(w_in)
        else:
            dz = dz.view(gn * r, t)
            if need_params:
                d_in = torch.cat([dlogits.view(gn, t).mm(x), dz.mm(x_experts)])
            if need[1]:
                dx = dlogits.view(gn, t).t().mm(w_in[:gn])
            if need[2]:
                dxe = dz.t().mm(w_in[gn:])

        if dx is not None and ctx.with_base:
            add_base_input_grads(layers, grads[:grp], dx)
        out = [None, dx, dxe, dg, d_tok, None, None]
        if not need_params:
            return tuple(out + [None] * (len(need) - P0))
        d_in[gn:].mul_(first.scaling)
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
