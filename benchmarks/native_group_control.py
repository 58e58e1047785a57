"""A control for the speed bench: HDMoLE's autograd node per group with its body in C++.

``install(model)`` makes every HDMoLE layer of ``model`` run ``NativeGroupMixture`` in place of
espnet_hdmole.layers.group_mixture's ``GroupMixture`` in training: the node's forward (packing,
the routers' and A's matmul, the routing, the B matmuls) and its backward are each one call into
native_group_control.cpp, which runs the same ATen operations with the same arguments, in the
same order, as the Python node. What it trains is HDMoLE, bit for bit
(tests/test_benchmarks.py); what it takes away is the Python between those operations. It
measures how much a native node would save, not a shipped path: the recipe keeps the Python
node. It covers the recipe's HDMoLE (activation 'threshold', combine 'product', output_scale
'expert', temperature 1, no dropout on the experts' input, no load-balancing loss) and refuses
the rest. Decoding (no autograd) keeps the Python ``mixture_forward``.

The extension is compiled at first use with torch.utils.cpp_extension (g++ and ninja; about 25 s
on this project's 2-core machine, then cached under $TORCH_EXTENSIONS_DIR, by default
~/.cache/torch_extensions). The node stays a Python ``autograd.Function`` (its wrapper, the
saving of its tensors and one dispatch call per group remain). The switch is made per layer
(control_dispatch.py), so a native system and the real one can share an interleaved process
(bench_llm_asr.py --interleave).
"""
from pathlib import Path

import torch

import control_dispatch
from espnet_hdmole.layers.hdmole_linear import HDMoLELinear
from espnet_hdmole.layers.group_mixture import P0
from espnet_hdmole.layers.routing import expert_posterior

SOURCE = Path(__file__).with_suffix(".cpp")
_EXT = []


def extension():
    """The compiled native_group_control.cpp (built once per process, cached on disk)."""
    if not _EXT:
        from torch.utils.cpp_extension import load

        _EXT.append(load("hdmole_native_group_control", [str(SOURCE)], extra_cflags=["-O3"], verbose=False))
    return _EXT[0]


def check_layer(m) -> None:
    """Refuse a layer whose settings the C++ body does not implement."""
    wanted = dict(activation="threshold", combine="product", output_scale="expert", temperature=1.0, lb_weight=0)
    bad = {k: getattr(m, k) for k, v in wanted.items() if getattr(m, k) != v}
    if m.global_router == "none":
        bad["global_router"] = m.global_router
    if not isinstance(m.lora_dropout, torch.nn.Identity):
        bad["dropout_rate"] = m.lora_dropout.p
    if bad:
        raise ValueError(f"native_group_control: layer '{m.name}' has {bad}; the native node implements "
                         f"{wanted} with a global router and without dropout on the experts' input")


def _base(layers, with_base: bool):
    """The layers' frozen base weights and biases where the node computes their base linears
    (``with_base``), else two empty lists."""
    if not with_base:
        return [], []
    return [m._parameters["weight"] for m in layers], [m._parameters.get("bias") for m in layers]


class NativeGroupMixture(torch.autograd.Function):
    """``GroupMixture``'s interface (the same arguments and outputs), its body in C++."""

    @staticmethod
    def forward(ctx, layers, x, x_experts, g, token_theta, need_local, with_base, *params):
        first, grp = layers[0], len(layers)
        if x_experts is not None or token_theta is not None or need_local or g is None or g.requires_grad:
            raise ValueError("native_group_control: dropout, a token threshold, the local router's output, no "
                             "domain posterior or its gradient (a trained accent head) are not implemented")
        ge = expert_posterior(g, first.experts_per_domain, log=True)  # (once per forward, as the Python node)
        base_w, base_b = _base(layers, with_base)
        res = extension().group_forward(list(params), x, ge, grp, first.num_experts, first.rank, first.scaling,
                                        first.tau_max, base_w, base_b)
        p, w, active, norm, z, zw, w_in, minus_dtau, tau = res[grp:]
        ctx.set_materialize_grads(False)
        ctx.layers, ctx.utterances, ctx.with_base = layers, g.shape[0], with_base
        ctx.save_for_backward(x, p, w, active, norm, z, zw, w_in, minus_dtau, *params)
        return (*res[:grp], None, {"p": p, "w": w, "active": active, "tau": tau.view(grp)})

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        layers = ctx.layers
        first, grp = layers[0], len(layers)
        x, p, w, active, norm, z, zw, w_in, minus_dtau, *params = ctx.saved_tensors
        need, p0 = ctx.needs_input_grad, P0  # NODE_ARGS, then the layers' parameters
        per_layer = len(params) // grp
        res = extension().group_backward(list(grads[:grp]), params, x, ctx.utterances, p, w, active, norm, z, zw,
                                         w_in, minus_dtau, grp, first.num_experts, first.rank, first.scaling, need[1],
                                         [need[p0 + j * per_layer + 3] for j in range(grp)], any(need[p0:]),
                                         _base(layers, ctx.with_base)[0])
        d_params = res[1:] or [None] * len(params)  # (none where no parameter needs a gradient)
        return (None, res[0], None, None, None, None, None,
                *[gr if n else None for gr, n in zip(d_params, need[p0:])])


def install(model: torch.nn.Module) -> int:
    """Make every HDMoLE layer of ``model`` run the native node in training (compiling the
    extension if need be). Returns the number of layers switched; a model without HDMoLE layers,
    or with settings the node does not implement, is an error."""
    layers = [m for m in model.modules() if isinstance(m, HDMoLELinear)]
    if not layers:
        raise ValueError("native_group_control.install: the model has no HDMoLE layer (adapter: hdmole)")
    for m in layers:
        check_layer(m)
    extension()
    return control_dispatch.switch(layers, NativeGroupMixture)
