"""Float32 islands in a model of lower precision.

A model may run in bfloat16 or float16: cast as a whole (ESPnet's ``--train_dtype``, the
decoder's ``--dtype``), with its LLM loaded in ``model_conf.llm_dtype``, or under autocast
(``--use_amp``). The HDMoLE adapters and the accent-ID head (the global router) still keep their
parameters in float32 and compute in float32: the routers' softmax and thresholds, and the
experts' small updates to frozen weights, are where bfloat16's 8-bit mantissa hurts. A model in
float64 is left in float64 (nothing here lowers a precision).

ESPnet's own ``lora`` adapter (loralib) is not such an island: its forward multiplies its input,
in the base layer's dtype, by ``lora_A`` directly, so its parameters have to be in that dtype
(``lora_to_base_dtype``).
"""
import logging
from contextlib import nullcontext
from typing import ContextManager, Iterable

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """float32 for a half-precision dtype, the dtype itself otherwise."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def params_to_fp32(params: Iterable[torch.nn.Parameter]) -> int:
    """Cast every half-precision parameter to float32 in place (the same Parameter objects, so
    an optimiser or a parameter list holding them stays valid), with its gradient if any.
    Returns how many were cast."""
    n = 0
    for p in params:
        if p.dtype in LOW_PRECISION:
            grad = p.grad
            p.grad = None
            p.data = p.data.float()
            if grad is not None:
                p.grad = grad.float()
            n += 1
    return n


def autocast_on(device_type: str) -> bool:
    """Whether autocast (AMP) is enabled on ``device_type``; False where the device has none
    (asking there raises, e.g. on meta)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_off(device_type: str) -> ContextManager:
    """A block where autocast (AMP) is disabled on ``device_type``, so that float32 inputs and
    weights give float32 results; a no-op context where the device has no autocast."""
    if autocast_on(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()  # (entering a disabling autocast block costs ~25 us per layer call)


def lora_to_base_dtype(model: torch.nn.Module) -> int:
    """Cast the parameters of every loralib LoRA layer (ESPnet's ``lora`` adapter) of ``model`` to
    its base weight's dtype, without which its training forward fails on a half-precision base.
    Returns how many tensors were cast (a warning says so when any was)."""
    try:
        from loralib import LoRALayer
    except ImportError:  # pragma: no cover (ESPnet's lora adapter needs loralib)
        return 0
    n = 0
    for name, m in model.named_modules():
        weight = getattr(m, "weight", None)
        if not isinstance(m, LoRALayer) or weight is None:
            continue
        for p in (getattr(m, "lora_A", None), getattr(m, "lora_B", None)):
            if isinstance(p, torch.nn.Parameter) and p.dtype != weight.dtype:
                p.data = p.data.to(weight.dtype)
                n += 1
    if n:
        logging.warning(f"ESPnet's lora adapter: {n} LoRA tensors cast to their base layers' dtype (e.g. "
                        "bfloat16), as loralib computes in it; the HDMoLE adapters stay in float32")
    return n
