"""A control for the speed bench: HDMoLE's layers with their routing taken out.

``install(model)`` makes every HDMoLE layer of ``model`` run ``RoutingFree`` in place of
espnet_hdmole.layers.group_mixture's ``GroupMixture`` (and, where nothing needs a gradient, of its
``mixture_forward``): the same packing of the group's weights, the same matmuls (the routers' and
A's as one, each layer's B, and in the backward their gradients and the input's), but every expert
weighted 1/N: no softmax, combination, threshold or top-k is applied, forward or backward (the
routers' rows get a zero gradient through the same matmul). What stays: the packing (the
thresholds' sigmoid included, reported to the statistics), one autograd node per group, the
accent head's posterior and the trainer's routing statistics (over the uniform weights). Its step
is the floor of any routing implemented within this frame: what the mixture's matmuls and the
group's fixed costs take alone; a leaner frame (a native group op, say) would lower the floor too.
It is a timing control only; what it trains is not HDMoLE (a dense, uniform mixture).

The switch is made per layer (control_dispatch.py), so a routing-free system and the
real one can share a process (``bench_llm_asr.py --interleave``; the real layers then pass through
the dispatch, one Python call more per group, microseconds a step). It covers the configurations the
recipe ships: no dropout on the experts' input is needed, but a threshold per token and the
load-balancing loss are refused (they read the routing).

Its backward runs the B matmuls with the real node's own ``b_matmuls_backward``; the control must
do that node's matmul work and nothing of its routing. tests/test_benchmarks.py checks that both
run the same matmuls, of the same shapes, forward and backward, so that a change to one without
the other fails.
"""
import torch

import control_dispatch
from espnet_hdmole.layers import group_mixture
from espnet_hdmole.layers.hdmole_linear import HDMoLELinear



def _matmuls_forward(layers, x, x_experts, token_theta, need_local, params):
    """(packed weights, the weighted expert inputs zw (G, N*r, T), each layer's delta factors, the
    routing the statistics read: uniform "p" and "w", and the layers' thresholds)."""
    first = layers[0]
    if token_theta is not None or need_local:
        raise ValueError("routing_free_control: a threshold per token or a load-balancing loss reads the "
                         "routing; the control covers activation 'threshold' / 'topk' / 'dense' with lb_weight 0")
    grp, n, r, t = len(layers), first.num_experts, first.rank, x.shape[0]
    gn = grp * n
    packed = group_mixture.packed_weights(layers, params)
    w_in = packed["in"]
    if x_experts is None:
        z = torch.addmm(packed["bias"], w_in, x.t())[gn:]  # (the routers' rows computed, then unused)
    else:
        torch.addmm(packed["bias"][:gn], w_in[:gn], x.t())
        z = w_in[gn:].mm(x_experts.t())
    zw = z.view(grp, n * r, t) * (1.0 / n)
    zwt = zw.transpose(1, 2)
    w = z.new_full((grp, n, t), 1.0 / n)
    routing = {"p": w, "w": w}
    if "tau" in packed:
        routing["tau"] = packed["tau"].view(grp)
    return packed, zw, [(zwt[j], b.t()) for j, b in enumerate(packed["B"])], routing


class RoutingFree(torch.autograd.Function):
    """``GroupMixture``'s interface and matmuls, with a uniform mixture for its routing."""

    @staticmethod
    def forward(ctx, layers, x, x_experts, g, token_theta, need_local, with_base, *params):
        packed, zw, factors, routing = _matmuls_forward(layers, x, x_experts, token_theta, need_local, params)
        ctx.set_materialize_grads(False)
        ctx.layers, ctx.packed, ctx.zw, ctx.with_base = layers, packed, zw, with_base
        ctx.save_for_backward(x, x_experts)
        outs = group_mixture.base_outputs(layers, x, factors) if with_base else [a.mm(b) for a, b in factors]
        return (*outs, None, routing)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        layers, packed, zw = ctx.layers, ctx.packed, ctx.zw
        x, x_experts = ctx.saved_tensors
        first = layers[0]
        grp, n, r, d = len(layers), first.num_experts, first.rank, first.in_features
        t, gn = x.shape[0], grp * n
        need = ctx.needs_input_grad  # group_mixture.NODE_ARGS, then the layers' parameters
        p0 = group_mixture.P0
        per_layer = (len(need) - p0) // grp
        need_params = any(need[p0:])
        dzw, d_b = group_mixture.b_matmuls_backward(grads[:grp], packed["B"], zw, r,
                                                    [need[p0 + j * per_layer + 3] for j in range(grp)])
        dz = dzw.view(gn * r, t) * (1.0 / n)
        dlogits = dz.new_zeros(gn, t)  # no routing: the routers' rows get nothing
        dx = dxe = d_in = None
        w_in = packed["in"]
        if x_experts is None:
            dout = torch.cat([dlogits, dz])
            if need_params:
                d_in = dout.mm(x)
            if need[1]:
                dx = dout.t().mm(w_in)
        else:
            if need_params:
                d_in = torch.cat([dlogits.mm(x), dz.mm(x_experts)])
            if need[1]:
                dx = dlogits.t().mm(w_in[:gn])
            if need[2]:
                dxe = dz.t().mm(w_in[gn:])
        if dx is not None and ctx.with_base:
            group_mixture.add_base_input_grads(layers, grads[:grp], dx)
        out = [None, dx, dxe, None, None, None, None]
        if not need_params:
            return tuple(out + [None] * (len(need) - p0))
        d_in[gn:].mul_(first.scaling)
        for j in range(grp):
            out += [d_in[j * n:(j + 1) * n], d_in.new_zeros(n), d_in[gn + j * n * r:gn + (j + 1) * n * r].view(n, r, d),
                    d_b[j]]
            if first.activation == "threshold":
                out.append(d_in.new_zeros(()))
            if first.combine == "mix":
                out.append(None)
        return tuple(out)


def _mixture_forward_free(layers, x, x_experts, g, token_theta, need_local, params=None):
    """``mixture_forward``'s interface (no autograd), routing-free."""
    packed, zw, factors, routing = _matmuls_forward(layers, x, x_experts, token_theta, need_local, params)
    return factors, None, routing, None


def install(model: torch.nn.Module) -> int:
    """Make every HDMoLE layer of ``model`` routing-free (the others' layers are left as they are).
    Returns the number of layers switched; a model without HDMoLE layers is an error."""
    layers = [m for m in model.modules() if isinstance(m, HDMoLELinear)]
    if not layers:
        raise ValueError("routing_free_control.install: the model has no HDMoLE layer (adapter: hdmole)")
    return control_dispatch.switch(layers, RoutingFree, _mixture_forward_free)
