"""What a system trains, against what full fine-tuning of the same parts would train."""
from typing import Dict

import torch

ADAPTER_MARKERS = ("lora_A", "lora_B", "router.", "threshold", "mix_logit")


def is_adapter_parameter(name: str) -> bool:
    """HDMoLE (lora_A/B, router, threshold, mix_logit) and loralib (lora_A/B) parameters."""
    return any(m in name for m in ADAPTER_MARKERS)


def trainable_parameter_report(model: torch.nn.Module) -> Dict:
    """Counts per top-level part (encoder, projector, llm, accent_head, ...).

    ``reference`` is what full fine-tuning of the parts this system touches would train: the
    base (non-adapter) parameters of every part with at least one trainable parameter.
    """
    parts: Dict[str, Dict[str, int]] = {}
    for name, p in model.named_parameters():
        part = name.split(".", 1)[0]
        d = parts.setdefault(part, {"trainable": 0, "base": 0, "adapter": 0})
        if p.requires_grad:
            d["trainable"] += p.numel()
        if is_adapter_parameter(name):
            d["adapter"] += p.numel()
        else:
            d["base"] += p.numel()
    trainable = sum(d["trainable"] for d in parts.values())
    touched = [k for k, d in parts.items() if d["trainable"] > 0]
    reference = sum(parts[k]["base"] for k in touched)
    share = 100.0 * trainable / reference if reference else 0.0
    lines = [
        f"trainable parameters: {trainable:,} = {share:.2f}% of the {reference:,} that full fine-tuning of "
        f"[{', '.join(touched)}] would train"
    ]
    for k, d in parts.items():
        lines.append(f"  {k}: trainable {d['trainable']:,} / base {d['base']:,} (+ adapter {d['adapter']:,})")
    return {"trainable": trainable, "reference": reference, "share": share, "parts": parts, "touched": touched,
            "text": "\n".join(lines)}
