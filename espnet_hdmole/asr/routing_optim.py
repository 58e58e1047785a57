"""Separate optimisation of the routing parts (``--routing_optim_conf``).

The routing parts are the local routers, the thresholds (``threshold``, ``threshold_proj``), the
mixing share of ``combine: mix`` (``mix_logit``) of every HDMoLE layer, and the accent-ID head
(the global router) where it trains. Two settings:

* ``lr_scale`` (default 1.0): their learning rate is the optimiser's times this factor (their own
  parameter group; ESPnet's schedulers scale every group's rate by the same factor, so the ratio
  holds through warm-up and decay);
* ``freeze_steps`` (default 0): for this many optimiser steps their gradients are zeroed, so the
  routers wait until the experts' B (zero at the start) give their choice a meaning.

The rest of ``optim_conf`` (e.g. weight decay) applies to both groups.
"""
from typing import Dict, List, Tuple

import torch

from espnet_hdmole.errors import UserError
from espnet_hdmole.layers.create_hdmole_adapter import hdmole_layers

DEFAULTS = {"lr_scale": 1.0, "freeze_steps": 0}
ROUTING_NAMES = ("router", "threshold", "threshold_proj", "mix_logit")


def check_routing_optim_conf(conf) -> Dict[str, float]:
    """--routing_optim_conf with its defaults; a UserError names a wrong key or value."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(DEFAULTS))
    if unknown:
        raise UserError(f"routing_optim_conf has unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    out = dict(DEFAULTS, **conf)
    scale, steps = out["lr_scale"], out["freeze_steps"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise UserError(f"routing_optim_conf.lr_scale must be a number > 0, not {scale!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UserError(f"routing_optim_conf.freeze_steps must be an integer >= 0, not {steps!r}")
    return out


def routing_parameters(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the trainable routing parts of ``model`` (see the module doc)."""
    out = []
    for lname, layer in hdmole_layers(model):
        for pname, p in layer.named_parameters():
            if p.requires_grad and pname.split(".")[0] in ROUTING_NAMES:
                out.append((f"{lname}.{pname}" if lname else pname, p))
    head = getattr(model, "accent_head", None)
    if head is not None:
        out += [(f"accent_head.{n}", p) for n, p in head.named_parameters() if p.requires_grad]
    return out


def parameter_groups(model: torch.nn.Module, lr: float, conf: Dict[str, float]) -> List[dict]:
    """The optimiser's parameter groups: every other trainable parameter at ``lr``, the routing
    parts in a group of their own (named "routing") at ``lr * lr_scale``; one group when neither
    setting is in use."""
    routing = {id(p) for _, p in routing_parameters(model)}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in routing]
    route = [p for p in model.parameters() if p.requires_grad and id(p) in routing]
    if (conf["lr_scale"] == 1.0 and conf["freeze_steps"] == 0) or not route:
        return [{"params": rest + route}]
    groups = [{"params": route, "lr": lr * conf["lr_scale"], "name": "routing"}]
    return ([{"params": rest}] if rest else []) + groups


class RouterFreeze:
    """For the first ``steps`` steps of ``optimizer``, its "routing" group does not move: its
    gradients are zeroed (Adam's moments stay at rest) and its rate is 0 during the step (no
    weight decay either); the rate is put back after each step, so schedulers work as usual."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int):
        self.steps, self.done = steps, 0
        self.groups = [g for g in optimizer.param_groups if g.get("name") == "routing"]
        self._saved: List[float] = []
        optimizer.register_step_pre_hook(self._before_step)
        optimizer.register_step_post_hook(self._after_step)

    def steps_done(self, optimizer) -> int:
        """Optimiser steps taken so far: Adam-like optimisers count them in their state (which a
        resumed run reloads); otherwise this object's own count."""
        for g in self.groups:
            for p in g["params"]:
                step = optimizer.state.get(p, {}).get("step")
                if step is not None:
                    return int(step)
        return self.done

    def _before_step(self, optimizer, args, kwargs):
        self._saved = []
        if self.steps_done(optimizer) < self.steps:
            for g in self.groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.zero_()
                self._saved.append(g["lr"])
                g["lr"] = 0.0

    def _after_step(self, optimizer, args, kwargs):
        for g, lr in zip(self.groups, self._saved):
            g["lr"] = lr
        self._saved = []
        self.done += 1
