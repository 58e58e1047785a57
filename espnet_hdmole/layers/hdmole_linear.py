"""HDMoLELinear: a frozen linear layer plus a hierarchically routed mixture of LoRA experts.

Math (one token x of utterance u; N = num_domains * experts_per_domain experts, expert i
belongs to domain dom(i) = i // experts_per_domain):

    E_i(x) = (alpha / r) * B_i A_i dropout(x)            A_i: (r, d_in), B_i: (d_out, r), B_i = 0 at init
    l      = softmax(router(x) / temperature)             local router, per layer and token
    p      = combine(l, g_u)                              g_u: utterance domain posterior (global router)
               product: p_i ~ g_u[dom(i)] * l_i ; mix: (1 - s) l + s expand(g_u) / E ; none: l
    w      = activation(p)
               threshold:       tau = tau_max * sigmoid(theta) (theta: this layer's scalar ``threshold``),
                                w_i = (p_i - tau) on {p_i >= tau}, renormalised
               token_threshold: the same with tau(x) = tau_max * sigmoid(w_tau . x + b_tau)
               topk:            the top_k largest p_i, renormalised
               dense:           w = p
    y      = W0 x + b + c * sum_i w_i E_i(x)
               c (``output_scale``): 1 for 'expert' (each expert at LoRA's scale, the routing weights
               summing to 1); for 'lora' the number of experts in use: N for dense, top_k for
               topk, the token's active experts for the thresholds. With 'lora' a uniform dense
               mixture of N rank-r experts is exactly a LoRA of rank N*r with the same alpha per
               rank (alpha_lora = N * alpha, scale alpha / r), in its output and in its gradients;
               with 'expert' it moves the output at 1/N of that LoRA's scale.

tau_max defaults to 1/N, so max_i p_i >= 1/N > tau and at least one expert is always active.
The experts run batched: ``lora_A`` (N, r, d_in) read as (N*r, d_in) and ``lora_B`` (d_out, N, r)
as (d_out, N*r) give two matmuls for all experts, whatever N is; the router shares A's matmul
(without dropout), and layers that read the same input (q/k/v, gate/up) can run their routers and
A's together (espnet_hdmole.layers.shared_input), as one autograd node with a hand-written
backward (espnet_hdmole.layers.group_mixture).

The layer subclasses ``torch.nn.Linear`` and shares the wrapped layer's ``weight`` and ``bias``
parameters (frozen), so state-dict keys of the base model are unchanged and a checkpoint of the
base model loads into the adapted one.

Precision: the frozen W0 x + b runs in the base layer's dtype (bfloat16, say). The adapter's own
parameters are float32 (at least; see espnet_hdmole.layers.precision), and the routing and the
experts' path run in their dtype with autocast off, from x cast up; the sum over the experts is
cast to the base output's dtype before it is added.
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from espnet_hdmole.errors import UserError
from espnet_hdmole.layers.cpu_dropout import CPUDropout
from espnet_hdmole.layers.precision import at_least_fp32, params_to_fp32

from espnet_hdmole.layers.routing import ACTIVATIONS, PAD, COMBINES, GLOBAL_ROUTERS, current_domain_posterior
from espnet_hdmole.layers.group_mixture import group_routing
from espnet_hdmole.layers.shared_input import layer_outputs


OUTPUT_SCALES = ("expert", "lora")


def _check_settings(num_domains, experts_per_domain, rank, alpha, dropout_rate, temperature, global_router,
                    combine, activation, top_k, tau_max, output_scale="expert") -> None:
    """adapter_conf values, checked; a UserError names the key and what was expected."""

    def need(ok: bool, key: str, expected: str, value) -> None:
        if not ok:
            raise UserError(f"adapter_conf.{key} must be {expected}, got {value!r}")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    need(global_router in GLOBAL_ROUTERS, "global_router", f"one of {list(GLOBAL_ROUTERS)}", global_router)
    need(combine in COMBINES, "combine", f"one of {list(COMBINES)}", combine)
    if global_router == "none" and combine != "none":
        raise UserError(f"adapter_conf.combine: {combine!r} needs a global router, but adapter_conf.global_router "
                        f"is 'none'")
    need(activation in ACTIVATIONS, "activation", f"one of {list(ACTIVATIONS)}", activation)
    need(output_scale in OUTPUT_SCALES, "output_scale", f"one of {list(OUTPUT_SCALES)}", output_scale)
    for key, v in (("num_domains", num_domains), ("experts_per_domain", experts_per_domain), ("rank", rank)):
        need(is_int(v) and v >= 1, key, "an integer >= 1", v)
    n = num_domains * experts_per_domain
    if activation == "topk":
        need(is_int(top_k) and 1 <= top_k <= n, "top_k",
             f"an integer from 1 to {n} (the number of experts: num_domains x experts_per_domain)", top_k)
    need(is_num(alpha) and alpha > 0, "alpha", "a number > 0", alpha)
    need(is_num(dropout_rate) and 0 <= dropout_rate < 1, "dropout_rate", "a number in [0, 1)", dropout_rate)
    need(is_num(temperature) and temperature > 0, "temperature", "a number > 0", temperature)
    if tau_max is not None:
        need(is_num(tau_max) and 0 < tau_max <= 1.0 / n, "tau_max",
             f"a number in (0, 1/{n}] (at most 1 / the number of experts, so one expert is always active)", tau_max)


class HDMoLELinear(torch.nn.Linear):
    """A frozen ``torch.nn.Linear`` with an HDMoLE mixture of LoRA experts (see module docstring).

    Args:
        base: the linear layer to adapt; its weight and bias become this layer's (frozen).
        num_domains: D, the number of accent domains of the global router.
        experts_per_domain: E, experts tied to each domain (N = D * E).
        rank: r, rank of each expert.
        alpha: LoRA scaling numerator (scale = alpha / r).
        dropout_rate: dropout on the experts' input.
        temperature: softmax temperature of the local router.
        global_router: 'predicted' | 'oracle' (both read the posterior set by
            ``espnet_hdmole.domain_posterior``) | 'none' (no hierarchy).
        combine: 'product' | 'mix' | 'none'; default: 'product' with a global router,
            'none' without one.
        activation: 'threshold' | 'token_threshold' | 'topk' | 'dense'.
        top_k: number of experts for 'topk'.
        tau_max: upper bound of the threshold (default 1/N).
        threshold_init: initial theta (tau = tau_max * sigmoid(theta)).
        mix_init: initial logit of the mixing share s for combine 'mix'.
        lb_weight: weight of the Switch-style load-balancing loss (0 disables it).
        output_scale: 'expert' (default: the mixture's weights sum to 1, each expert at scale
            alpha / r) | 'lora' (the sum multiplied by the number of experts in use, so that a
            uniform mixture equals a LoRA of rank N * r with the same alpha per rank).
        router_init_std: standard deviation of the local router's initial weights (its bias starts
            at 0); 0 starts every token at uniform routing.
        name: the layer's name in its model, used in error messages and statistics.
    """

    def __init__(
        self,
        base: torch.nn.Linear,
        num_domains: int = 1,
        experts_per_domain: int = 1,
        rank: int = 8,
        alpha: float = 8.0,
        dropout_rate: float = 0.0,
        temperature: float = 1.0,
        global_router: str = "predicted",
        combine: Optional[str] = None,
        activation: str = "threshold",
        top_k: int = 2,
        tau_max: Optional[float] = None,
        threshold_init: float = 0.0,
        mix_init: float = 0.0,
        lb_weight: float = 0.0,
        output_scale: str = "expert",
        router_init_std: float = 0.02,
        name: str = "",
    ):
        if not isinstance(base, torch.nn.Linear):
            raise TypeError(f"HDMoLELinear wraps a torch.nn.Linear, got {type(base).__name__} ({name})")
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

        if combine is None:
            combine = "none" if global_router == "none" else "product"
        _check_settings(num_domains, experts_per_domain, rank, alpha, dropout_rate, temperature, global_router,
                        combine, activation, top_k, tau_max, output_scale)
        n = num_domains * experts_per_domain

        self.name = name
        self.num_domains, self.experts_per_domain, self.num_experts = num_domains, experts_per_domain, n
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.temperature = temperature
        self.global_router, self.combine, self.activation = global_router, combine, activation
        self.top_k = top_k
        self.tau_max = 1.0 / n if tau_max is None else float(tau_max)
        self.lb_weight = lb_weight
        self.output_scale = output_scale
        if isinstance(router_init_std, bool) or not isinstance(router_init_std, (int, float)) \
                or not math.isfinite(router_init_std) or router_init_std < 0:
            raise UserError(f"adapter_conf.router_init_std must be a number >= 0, not {router_init_std!r}")
        self.router_init_std = float(router_init_std)

        factory = dict(device=base.weight.device, dtype=at_least_fp32(base.weight.dtype))
        self.lora_A = torch.nn.Parameter(torch.empty(n, rank, self.in_features, **factory))
        # B laid out (d_out, N, r): as one (d_out, N*r) matrix it is a view, with no copy per step
        self.lora_B = torch.nn.Parameter(torch.zeros(self.out_features, n, rank, **factory))
        self.router = torch.nn.Linear(self.in_features, n, **factory)
        self.lora_dropout = CPUDropout(dropout_rate) if dropout_rate > 0 else torch.nn.Identity()
        if activation == "threshold":
            self.threshold = torch.nn.Parameter(torch.tensor(float(threshold_init), **factory))
        elif activation == "token_threshold":
            self.threshold_proj = torch.nn.Linear(self.in_features, 1, **factory)
        if combine == "mix":
            self.mix_logit = torch.nn.Parameter(torch.tensor(float(mix_init), **factory))
        self.reset_adapter_parameters(threshold_init)

        self._last: Optional[Dict[str, torch.Tensor]] = None
        self._aux_loss: Optional[torch.Tensor] = None
        self._shared_input_group = None  # set by shared_input.group_shared_inputs

    def reset_adapter_parameters(self, threshold_init: float = 0.0):
        """Kaiming-uniform A (as nn.Linear), zero B, router weights N(0, router_init_std^2), theta = threshold_init."""
        for i in range(self.num_experts):
            torch.nn.init.kaiming_uniform_(self.lora_A.data[i], a=math.sqrt(5))
        torch.nn.init.zeros_(self.lora_B)
        torch.nn.init.normal_(self.router.weight, std=self.router_init_std)
        torch.nn.init.zeros_(self.router.bias)
        if hasattr(self, "threshold_proj"):
            torch.nn.init.zeros_(self.threshold_proj.weight)
            torch.nn.init.constant_(self.threshold_proj.bias, threshold_init)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Loads checkpoints written before lora_B was laid out (d_out, N, r): their (N, d_out, r)
        is transposed (told apart by its shape; the two coincide only where N = d_out)."""
        key = prefix + "lora_B"
        got = state_dict.get(key)
        n, out = self.num_experts, self.out_features
        if isinstance(got, torch.Tensor) and n != out and tuple(got.shape) == (n, out, self.rank):
            state_dict[key] = got.transpose(0, 1).contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- the protocol the adapter helpers use: what is trainable and saved ----
    def adapter_parameters(self) -> Dict[str, torch.nn.Parameter]:
        """Every parameter of this layer except the frozen base weight and bias."""
        return {k: p for k, p in self.named_parameters() if k not in ("weight", "bias")}

    def adapter_to_fp32(self) -> int:
        """Put the adapter's parameters back in float32 after a cast of the model to half precision
        (the frozen base weight keeps its dtype). Returns how many tensors were cast."""
        return params_to_fp32(self.adapter_parameters().values())

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_domains}x"
            f"{self.experts_per_domain}, rank={self.rank}, global_router={self.global_router}, "
            f"combine={self.combine}, activation={self.activation}, output_scale={self.output_scale}"
        )

    # ---- routing ----
    def _utterance_posterior(self, lead: torch.Size, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """The domain posterior (batch, num_domains) in ``dtype``, checked against this layer and
        the input's leading dims ``lead`` (batch first); None without a global router."""
        if self.global_router == "none":
            return None
        g = current_domain_posterior()
        if g is None:
            raise RuntimeError(
                f"HDMoLE layer '{self.name}' has global_router={self.global_router!r} but no domain "
                "posterior is set: call it inside `with espnet_hdmole.domain_posterior(g):` with g of "
                "shape (batch, num_domains), or configure global_router: none"
            )
        if g.shape[-1] != self.num_domains:
            raise ValueError(
                f"HDMoLE layer '{self.name}' has num_domains={self.num_domains}, but the domain "
                f"posterior has {g.shape[-1]} columns"
            )
        if len(lead) == 0 or lead[0] != g.shape[0]:
            raise ValueError(
                f"HDMoLE layer '{self.name}': input batch {tuple(lead)[:1]} does not match the "
                f"domain posterior's batch {g.shape[0]} (the first input dimension must be the batch)"
            )
        return g.to(dtype)

    def route(self, xt: torch.Tensor, lead: torch.Size):
        """Routing weights for flattened tokens xt (T, d_in), through autograd: returns
        (w, p, local, active, tau)."""
        tau = None  # group_routing's layout: (layers, experts, tokens)
        if self.activation == "threshold":
            tau = self.tau_max * torch.sigmoid(self.threshold.view(1, 1, 1))
        elif self.activation == "token_threshold":
            tau = self.tau_max * torch.sigmoid(self.threshold_proj(xt).t().unsqueeze(0))
        mix = self.mix_logit.view(1, 1, 1, 1) if self.combine == "mix" else None
        rt = group_routing(self, self.router(xt).t().unsqueeze(0), self._utterance_posterior(lead, xt.dtype),
                           tau, mix, need_local=True)
        tau, active = rt["tau"], rt["active"]
        if tau is not None:
            tau = tau.view(()) if self.activation == "threshold" else tau[0].t()
        return rt["w"][0].t(), rt["p"][0].t(), rt["local"][0].t(), None if active is None else active[0].t(), tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.__dict__.get("_is_replica"):  # (set by Module._replicate_for_data_parallel)
            raise UserError(
                f"HDMoLE layer '{self.name}' runs in a torch.nn.DataParallel replica, which it does not support: "
                "train on several GPUs with one process each (ESPnet's --multiprocessing_distributed true, which "
                "the recipe passes with --ngpu > 1)")
        lead, group = x.shape[:-1], self._shared_input_group
        if group is not None:  # computed with its siblings on the same input
            out, whole = group.output(self, x, lead)
        else:
            (out,), whole = layer_outputs([self], x, lead)
        if whole:  # the mixture computed the whole output, the frozen base linear's included
            return out.view(*lead, self.out_features)
        y = F.linear(x, self.weight, self.bias)  # (under autocast: in its dtype)
        return y.add_(out.view(y.shape).to(y.dtype))  # y is F.linear's own: added in place

    def load_balancing_loss(self, local: torch.Tensor, dispatch: torch.Tensor) -> torch.Tensor:
        """Switch-style loss N * sum_i f_i P_i: f_i the share of token dispatch to expert i
        (an active expert takes 1/|active| of a token), P_i the mean local-router probability."""
        d = dispatch.float()
        f = (d / d.sum(dim=-1, keepdim=True).clamp_min(1e-9)).mean(dim=0).detach()
        return self.num_experts * (f * local.float().mean(dim=0)).sum()

    # ---- statistics of the last forward, over the positions that hold something ----
    def mark_positions(self, kinds: torch.Tensor) -> bool:
        """Say what each input position of the last forward held: ``kinds`` (batch, T) of
        routing.PAD / SPEECH / TEXT. Statistics then leave padding out (and can be taken per kind).
        Returns False (nothing marked) when the last input was not laid out as (batch, T, d)."""
        if self._last is None or tuple(self._last["lead"]) != tuple(kinds.shape):
            return False
        # (the routing lies on the adapter's device: reading _last["w"] for it would copy the layer's weights out)
        self._last["kinds"] = kinds.reshape(-1).to(self.lora_A.device)
        return True

    def _positions(self, kind: Optional[int] = None) -> Optional[torch.Tensor]:
        """Mask of the flattened positions counted: not padding (or of ``kind``); None = all
        positions (the model did not mark them)."""
        kinds = self._last["kinds"]
        if kinds is None:
            return None if kind is None else torch.zeros_like(self._last["w"][:, 0], dtype=torch.bool)
        return kinds != PAD if kind is None else kinds == kind

    def routing_statistics(self, kind: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Statistics of the last forward (detached): mean active experts, mean threshold (where
        there is one), mean router entropy and ``use``, each expert's mean weight (N,), over the positions marked as
        holding something (``mark_positions``; all positions if none were marked), or over the
        positions of ``kind`` (empty dict if there are none)."""
        got = stacked_routing_statistics([self], kind)
        return {k: v[0] for k, v in got[0][1].items()} if got else {}

    def utterance_routing_weights(self, kind: Optional[int] = None) -> Optional[torch.Tensor]:
        """(batch, N): mean routing weight per utterance and expert in the last forward, over its
        marked positions (all if none were marked; only those of ``kind`` if given). An utterance
        without such positions gets a row of NaN."""
        if self._last is None:
            return None
        lead = self._last["lead"]
        w = self._last["w"].float().view(lead[0], -1, self.num_experts)
        sel = self._positions(kind)
        if sel is None:
            return w.mean(dim=1)
        m = sel.view(lead[0], -1, 1).to(w.dtype)
        return (w * m).sum(dim=1) / m.sum(dim=1)  # 0 / 0 = NaN where an utterance has none


def stacked_routing_statistics(layers: List[HDMoLELinear], kind: Optional[int] = None
                               ) -> List[Tuple[List[HDMoLELinear], Dict[str, torch.Tensor]]]:
    """``routing_statistics`` of many layers, computed over stacks of the layers whose last forward
    saw the same positions (the trainer asks for them every step): a list of (those layers,
    {statistic: per-layer values, (L,), or (L, N) for 'use'}); layers without a last forward, or
    without positions of ``kind``, are left out. The stacks are read straight from the groups'
    routing (experts first, tokens last), not layer by layer."""
    groups: Dict[tuple, List[HDMoLELinear]] = {}
    for m in layers:
        last = m._last
        if last is None:
            continue
        kinds = last["kinds"]
        key = (tuple(last["lead"]), m.num_experts, "active" in last, last.tau_layout(),
               None if kinds is None else (kinds.data_ptr(), kinds.shape, kinds.device))
        groups.setdefault(key, []).append(m)
    out = []
    for (_, n, has_active, tau_layout, _), ms in groups.items():
        sel = ms[0]._positions(kind)
        if sel is not None and not bool(sel.any()):
            continue
        slots = [m._last.group_slot() for m in ms]  # (the group's routing, the layer's row in it)
        parts, start, rows = {}, 0, []
        for routing, j in slots:
            if id(routing) not in parts:
                parts[id(routing)] = (start, routing)
                start += routing["p"].shape[0]
            rows.append(parts[id(routing)][0] + j)
        reorder = rows != list(range(start))

        # the mean over the positions counted, as one matrix-vector product over the tokens
        p0 = slots[0][0]["p"]
        over = torch.full(p0.shape[-1:], 1.0 / p0.shape[-1], device=p0.device) if sel is None else sel.float() / sel.sum()

        def stack(key: str) -> torch.Tensor:
            v = [routing[key] for _, routing in parts.values()]
            v = v[0] if len(v) == 1 else torch.cat(v)
            return v[rows] if reorder else v

        p = stack("p").float()
        stats = {"entropy": -(p * p.clamp_min(1e-12).log()).sum(1) @ over,
                 "use": stack("w").float() @ over,  # (L, N): each expert's mean weight
                 "active": stack("active").sum(1, dtype=torch.float32) @ over if has_active
                 else torch.full((len(ms),), float(n), device=p.device)}
        if tau_layout == "layer":
            stats["tau"] = stack("tau").float()
        elif tau_layout == "token":
            stats["tau"] = stack("tau").float().flatten(1) @ over
        out.append((ms, stats))
    return out
