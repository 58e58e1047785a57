"""The parts of a model that the adapters of ESPnet's table may wrap.

ESPnet's adapter creators match ``target_modules`` against every module name of the model: its
LoRA takes a name that ends with a target, this project's ``hdmole`` one that equals a target or
ends with ``.<target>``. A Whisper encoder and a Qwen2 LLM both have ``self_attn.q_proj`` layers,
so ``target_modules: [q_proj, v_proj]`` would also put adapters into the frozen speech encoder.
A model with an ``adapter_scope`` attribute (the names of its top-level parts that adapters may go
into, e.g. ``("projector", "llm")``) gets them there only: :func:`scoped` turns the targets into the
full names of the matching modules inside the scope and hands those to the creator, which then
wraps exactly them and keeps its own freezing rules over the whole model. A model without the
attribute is passed through unchanged.
"""
import functools
import logging
from typing import Callable, List

import torch

from espnet_hdmole.errors import UserError


def lora_matches(name: str, targets: List[str]) -> bool:
    """ESPnet's LoRA rule: the module name ends with a target."""
    return any(name.endswith(t) for t in targets)


def hdmole_matches(name: str, targets: List[str]) -> bool:
    """The hdmole rule: the module name equals a target or ends with '.<target>'."""
    return any(name == t or name.endswith("." + t) for t in targets)


def in_scope(name: str, scope) -> bool:
    """Whether a module name lies inside one of the scope's top-level parts."""
    return name.split(".", 1)[0] in scope


def scoped(create_fn: Callable, matches: Callable[[str, List[str]], bool], adapter: str) -> Callable:
    """``create_fn`` (an adapter creator of ESPnet's table) limited to ``model.adapter_scope``."""
    if getattr(create_fn, "_adapter_scoped", False):
        return create_fn

    @functools.wraps(create_fn)
    def create_in_scope(model: torch.nn.Module, **conf):
        scope = getattr(model, "adapter_scope", None)
        targets = conf.get("target_modules")
        if scope is None or not targets:
            return create_fn(model=model, **conf)  # the creator's own defaults and errors
        targets = [targets] if isinstance(targets, str) else list(targets)
        names = [n for n, _ in model.named_modules() if n and matches(n, targets)]
        inside = [n for n in names if in_scope(n, scope)]
        outside = [n for n in names if not in_scope(n, scope)]
        if not inside and outside:
            raise UserError(
                f"adapter '{adapter}': target_modules {targets} match only modules outside "
                f"model_conf.adapter_scope {list(scope)} (e.g. {outside[:3]}); add their part to "
                f"adapter_scope to adapt them"
            )
        if not inside:
            return create_fn(model=model, **conf)  # nothing matches anywhere: the creator says so
        if outside:
            logging.info(f"adapter '{adapter}': {len(outside)} modules matching target_modules lie outside "
                         f"model_conf.adapter_scope {list(scope)} and are not adapted (e.g. {outside[0]})")
        return create_fn(model=model, **{**conf, "target_modules": inside})

    create_in_scope._adapter_scoped = True
    return create_in_scope
