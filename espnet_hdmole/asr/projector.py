"""The projector between the speech encoder and the LLM: frame stacking, then a small MLP."""
from typing import Tuple

import torch

from espnet_hdmole.errors import UserError


class FrameStackProjector(torch.nn.Module):
    """Stack k consecutive encoder frames, then ``linear1`` -> GELU -> ``linear2``.

    (B, T, d_enc) -> (B, ceil(T / k), d_llm). An utterance's last position stacks its last frames
    with zeros, whatever the batch holds past its length, so its output does not depend on the
    batch. The two linears are named so that an adapter's
    ``target_modules`` can pick them (``projector.linear1``, ``projector.linear2``).

    Args:
        input_size: encoder output size d_enc.
        output_size: the LLM's hidden size d_llm.
        stack: k, frames stacked into one LLM position.
        hidden_size: width of the MLP (default: output_size).
    """

    def __init__(self, input_size: int, output_size: int, stack: int = 4, hidden_size: int = 0):
        super().__init__()
        if stack < 1:
            raise UserError(f"model_conf.projector_conf.stack must be >= 1, got {stack}")
        hidden_size = hidden_size or output_size
        self.stack = stack
        self.linear1 = torch.nn.Linear(input_size * stack, hidden_size)
        self.act = torch.nn.GELU()
        self.linear2 = torch.nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        k = self.stack
        if k > 1:  # frames past an utterance's length (the batch's padding, not zeros after an encoder) read as zeros
            x = x.masked_fill(torch.arange(t, device=x.device)[None, :, None] >= lengths.to(x.device)[:, None, None], 0.0)
        pad = (-t) % k
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        x = x.reshape(b, (t + pad) // k, d * k)
        return self.linear2(self.act(self.linear1(x))), (lengths + k - 1) // k
