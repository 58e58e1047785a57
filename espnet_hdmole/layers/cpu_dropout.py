"""Dropout with a cheaper mask on the CPU.

PyTorch draws a CPU dropout mask one float Bernoulli sample per element, on one thread: in the
demo's encoder training (stage 4, steps 1 and 1b) that took ~19% of a step. Here the mask comes
from 16-bit integers cut out of 64-bit draws (four elements per draw), compared with a threshold:
an element is kept with probability 1 - k / 65536, k = round(p * 65536), which differs from
1 - p by at most 2 ** -17, and the kept elements are scaled by 65536 / (65536 - k) so that the
expectation is unchanged. The draws come from torch's default CPU generator, so ``torch.manual_seed``
(ESPnet's --seed) makes them reproducible. On other devices, or outside training, this is
``torch.nn.functional.dropout``.

``use_cpu_dropout(model)`` puts ``CPUDropout`` in place of every ``torch.nn.Dropout`` of a model;
``LLMASRTask.build_model`` calls it.
"""
import torch

_LEVELS = 1 << 16


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout(x, p, training)``, with the cheaper mask on the CPU."""
    if not training or p == 0.0 or x.device.type != "cpu" or not x.is_floating_point():
        return torch.nn.functional.dropout(x, p, training)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    k = int(round(p * _LEVELS))
    if k >= _LEVELS:
        return x * 0.0
    n = x.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    lanes = draws.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    mask = (lanes >= k - (_LEVELS >> 1)).to(x.dtype).mul_(_LEVELS / (_LEVELS - k))  # 0, or the scale
    return x * mask


class CPUDropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` with the cheaper CPU mask of ``dropout`` (``inplace`` is not kept)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def use_cpu_dropout(model: torch.nn.Module) -> int:
    """Replace every ``torch.nn.Dropout`` (exactly that class) of ``model`` by a ``CPUDropout``
    with the same probability; returns how many were replaced."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout:
                new = CPUDropout(child.p)
                new.train(child.training)
                setattr(parent, name, new)
                n += 1
    return n
