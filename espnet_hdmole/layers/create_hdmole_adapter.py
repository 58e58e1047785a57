"""The ``hdmole`` adapter for ESPnet's adapter table, and helpers over adapted models.

``create_hdmole_adapter(model, target_modules=[...], **layer_conf)`` replaces every
``torch.nn.Linear`` whose dotted name ends with one of ``target_modules`` by an
:class:`HDMoLELinear` around it. The MoLE baselines are the same adapter with other settings
(``global_router: none``, ``activation: topk`` or ``dense``).
"""
import inspect
from typing import Dict, List, Optional, Tuple

import torch

from espnet_hdmole.errors import UserError
from espnet_hdmole.layers.adapter_scope import hdmole_matches as _matches
from espnet_hdmole.layers.hdmole_linear import HDMoLELinear, stacked_routing_statistics
from espnet_hdmole.layers.shared_input import group_shared_inputs

# the keys of adapter_conf that go to each HDMoLELinear
LAYER_KEYS = tuple(
    k for k in inspect.signature(HDMoLELinear.__init__).parameters if k not in ("self", "base", "name")
)
ADAPTER_KEYS = ("target_modules", "freeze_non_adapter", "keep_trainable", "shared_input_groups") + LAYER_KEYS


def create_hdmole_adapter(
    model: torch.nn.Module,
    target_modules: Optional[List[str]] = None,
    freeze_non_adapter: bool = True,
    keep_trainable: Optional[List[str]] = None,
    shared_input_groups: Optional[List[List[str]]] = None,
    **layer_conf,
) -> List[str]:
    """Wrap the targeted linears of ``model`` with HDMoLE layers, in place.

    Args:
        model: the model to adapt.
        target_modules: names (or dotted suffixes of names) of linear layers,
            e.g. ``["q_proj", "v_proj"]`` or ``["projector.linear1"]``.
        freeze_non_adapter: freeze every parameter that is not an adapter parameter
            (the wrapped base weights are frozen in any case).
        keep_trainable: name prefixes of parameters left trainable by freeze_non_adapter,
            e.g. ``["accent_head"]`` for the global router.
        shared_input_groups: names of sibling layers called on the same input, whose routers and
            experts' A run as one matmul (espnet_hdmole.layers.shared_input); default
            ``[[q_proj, k_proj, v_proj], [gate_proj, up_proj]]``, ``[]`` for none. The outputs
            are the same either way.
        **layer_conf: HDMoLELinear settings (num_domains, experts_per_domain, rank, alpha,
            dropout_rate, temperature, global_router, combine, activation, top_k, tau_max,
            threshold_init, mix_init, lb_weight, output_scale, router_init_std).

    Returns:
        The names of the wrapped layers.
    """
    unknown = sorted(set(layer_conf) - set(LAYER_KEYS))
    if unknown:
        raise UserError(
            f"unknown key(s) in adapter_conf for adapter 'hdmole': {unknown}; "
            f"expected some of {list(ADAPTER_KEYS)}"
        )
    if not target_modules:
        raise UserError("adapter_conf.target_modules is required for adapter 'hdmole' (a list of linear layer names)")
    if isinstance(target_modules, str):
        target_modules = [target_modules]

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    chosen = [(n, m) for n, m in linears if _matches(n, target_modules) and not isinstance(m, HDMoLELinear)]
    if not chosen:
        already = [n for n, m in linears if isinstance(m, HDMoLELinear) and _matches(n, target_modules)]
        if already:
            raise UserError(f"target_modules {target_modules} are already HDMoLE layers: {already}")
        names = [n for n, _ in linears]
        shown = ", ".join(names[:60]) + (f", ... ({len(names) - 60} more)" if len(names) > 60 else "")
        raise UserError(
            f"adapter 'hdmole': no linear layer matches target_modules={target_modules} "
            f"(a name matches when it equals a target or ends with '.<target>'). "
            f"Linear layers of this model: {shown or '(none)'}"
        )
    for name, lin in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, HDMoLELinear(lin, name=name, **layer_conf))
    _check_groups(shared_input_groups)
    group_shared_inputs(model, shared_input_groups)

    if freeze_non_adapter:
        keep = tuple(keep_trainable or ())
        adapter_names = set(adapter_state_dict_keys(model))
        for n, p in model.named_parameters():
            if n not in adapter_names and not (keep and n.startswith(keep)):
                p.requires_grad_(False)
    return [n for n, _ in chosen]


def _check_groups(groups) -> None:
    if groups is None:
        return
    if not isinstance(groups, (list, tuple)) or not all(
            isinstance(g, (list, tuple)) and all(isinstance(n, str) for n in g) for g in groups):
        raise UserError(f"adapter_conf.shared_input_groups must be a list of lists of layer names "
                        f"(e.g. [[q_proj, k_proj, v_proj], [gate_proj, up_proj]]), got {groups!r}")


def hdmole_layers(model: torch.nn.Module) -> List[Tuple[str, HDMoLELinear]]:
    """(name, layer) for every HDMoLE layer of the model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, HDMoLELinear)]


def keep_adapters_fp32(model: torch.nn.Module) -> int:
    """Put every HDMoLE layer's adapter parameters back in float32 after a cast of ``model`` to
    half precision (e.g. ``model.to(torch.bfloat16)``); frozen base weights keep their dtype.
    Returns how many tensors were cast."""
    return sum(layer.adapter_to_fp32() for _, layer in hdmole_layers(model))


def adapter_state_dict_keys(model: torch.nn.Module) -> List[str]:
    """Full state-dict keys of every adapter parameter of the model."""
    keys = []
    for name, layer in hdmole_layers(model):
        prefix = f"{name}." if name else ""
        keys += [prefix + k for k in layer.adapter_parameters()]
    return keys


def hdmole_state_dict(model: torch.nn.Module, extra_prefixes: Optional[List[str]] = None) -> Dict[str, torch.Tensor]:
    """The adapter-only state dict: every HDMoLE adapter parameter (and, optionally, the
    parameters under ``extra_prefixes``, such as the accent head), detached copies."""
    full = model.state_dict()
    keys = set(adapter_state_dict_keys(model))
    pre = tuple(extra_prefixes or ())
    return {k: v.detach().clone() for k, v in full.items() if k in keys or (pre and k.startswith(pre))}


def load_hdmole_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Load an adapter-only state dict; every adapter parameter of the model must be in it,
    and every key of it must exist in the model (no silent partial loads)."""
    own = model.state_dict()
    missing = sorted(set(adapter_state_dict_keys(model)) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(
            f"adapter state dict does not fit the model: missing {missing[:10]}"
            f"{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
            f"{'...' if len(unexpected) > 10 else ''}"
        )
    model.load_state_dict(state, strict=False)


Layers = List[Tuple[str, HDMoLELinear]]


def hdmole_aux_loss(model: torch.nn.Module, layers: Optional[Layers] = None) -> Optional[torch.Tensor]:
    """Sum of the load-balancing losses of the last forward (None when none was computed).
    ``layers``: ``hdmole_layers(model)`` when the caller has it (a walk over a large model's
    modules costs milliseconds; a training step takes it once)."""
    losses = [m._aux_loss for _, m in (hdmole_layers(model) if layers is None else layers) if m._aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


def mark_positions(model: torch.nn.Module, kinds: torch.Tensor, layers: Optional[Layers] = None) -> int:
    """Tell every HDMoLE layer of ``model`` (or of ``layers``) whose last input was (batch, T, d)
    with (batch, T) = kinds.shape what its positions held (routing.PAD / SPEECH / TEXT), so that
    its statistics leave padding out. Returns the number of layers marked."""
    return sum(layer.mark_positions(kinds) for _, layer in (hdmole_layers(model) if layers is None else layers))


def hdmole_statistics(model: torch.nn.Module, per_layer: bool = False, kind: Optional[int] = None,
                      layers: Optional[Layers] = None) -> Dict[str, torch.Tensor]:
    """Routing statistics of the last forward, for the trainer to log, over the positions that
    hold something (see ``mark_positions``), or only those of ``kind`` (routing.SPEECH, TEXT).

    Returns ``hdmole_active`` (mean number of active experts), ``hdmole_tau`` (mean
    threshold, over layers that have one), ``hdmole_entropy`` (mean router entropy),
    ``hdmole_use_e<i>`` (expert i's mean routing weight, averaged over the layers: the use of each
    expert, logged by the trainer every epoch), and with
    ``per_layer`` the same per layer as ``hdmole_<stat>/<layer name>``; plus ``hdmole_lb``,
    the load-balancing loss, where it was computed. ``layers``: as for ``hdmole_aux_loss``.
    """
    layers = hdmole_layers(model) if layers is None else layers
    names = {id(m): n for n, m in layers}
    acc: Dict[str, List[torch.Tensor]] = {}
    out: Dict[str, torch.Tensor] = {}
    for ms, stats in stacked_routing_statistics([m for _, m in layers], kind):
        for k, v in stats.items():
            acc.setdefault(k, []).append(v)
            if per_layer and k != "use":
                out.update({f"hdmole_{k}/{names[id(m)]}": x for m, x in zip(ms, v)})
    use = acc.pop("use", [])
    for k, vs in acc.items():
        out[f"hdmole_{k}"] = torch.cat(vs).mean()
    if use and len({u.shape[1] for u in use}) == 1:  # each expert's mean weight, averaged over the layers
        for i, u in enumerate(torch.cat(use).mean(0)):
            out[f"hdmole_use_e{i}"] = u
    aux = hdmole_aux_loss(model, layers)
    if aux is not None:
        out["hdmole_lb"] = aux.detach()
    return out


def count_parameters(model: torch.nn.Module) -> Tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
