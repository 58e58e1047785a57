"""The accent-identification head: HDMoLE's global router, a posterior over the accent domains.

Two shapes, chosen by ``model_conf.accent_head_conf`` (see ``AccentHead``):

* ``layers: 0`` (the default): the time-mean of its input sequence -> hidden -> ReLU -> logits.
* ``layers: N > 0``: a TDNN first, N one-dimensional convolutions over time (kernel 5, dilations
  1, 2, 3, ...; the first with stride 2), each followed by ReLU and a LayerNorm over channels,
  then statistics pooling (mean and standard deviation over the valid frames) -> hidden -> ReLU ->
  logits. The convolutions span about half a second, a syllable or two: enough to see a tone
  contour, which a time-mean of frames cannot keep.

``input`` says what the head reads: ``encoder`` (the speech encoder's output) or ``features``
(the model's normalised input features, e.g. fbank + pitch; ``feature_dims: [start, end]``
restricts it to a slice, e.g. the 3 pitch dimensions [80, 83]). A head on the features does not
depend on the encoder at all, so it can be trained on its own before any fine-tuning.
"""
from typing import List, Optional

import torch

from espnet_hdmole.errors import UserError

KEYS = ("input", "feature_dims", "layers", "channels", "hidden")


def check_accent_head_conf(conf: Optional[dict]) -> dict:
    """model_conf.accent_head_conf with its defaults; UserError naming the key if it is wrong."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(KEYS))
    if unknown:
        raise UserError(f"model_conf.accent_head_conf has unknown keys {unknown}; known: {list(KEYS)}")
    out = {"input": "encoder", "feature_dims": None, "layers": 0, "channels": 128, "hidden": 256}
    out.update(conf)
    if out["input"] not in ("encoder", "features"):
        raise UserError(f"model_conf.accent_head_conf.input must be 'encoder' or 'features', not {out['input']!r}")
    dims = out["feature_dims"]
    if dims is not None and not (
        isinstance(dims, (list, tuple)) and len(dims) == 2 and all(isinstance(d, int) for d in dims) and 0 <= dims[0] < dims[1]
    ):
        raise UserError(f"model_conf.accent_head_conf.feature_dims must be [start, end] with 0 <= start < end, not {dims!r}")
    if dims is not None and out["input"] != "features":
        raise UserError("model_conf.accent_head_conf.feature_dims needs input: features")
    for key in ("layers", "channels", "hidden"):
        if not isinstance(out[key], int) or out[key] < (0 if key == "layers" else 1):
            raise UserError(f"model_conf.accent_head_conf.{key} must be a{' non-negative' if key == 'layers' else ' positive'} integer, not {out[key]!r}")
    return out


class AccentHead(torch.nn.Module):
    """Sequence (B, T, input_size) and lengths -> logits (B, num_domains)."""

    def __init__(self, input_size: int, num_domains: int, hidden: int = 256, layers: int = 0, channels: int = 128):
        super().__init__()
        self.convs = torch.nn.ModuleList()
        self.norms = torch.nn.ModuleList()
        size = input_size
        for k in range(layers):
            stride, dilation = (2, 1) if k == 0 else (1, k + 1)
            self.convs.append(torch.nn.Conv1d(size, channels, 5, stride=stride, dilation=dilation, padding=2 * dilation))
            self.norms.append(torch.nn.LayerNorm(channels))
            size = channels
        pooled = 2 * size if layers else size
        self.hidden = torch.nn.Linear(pooled, hidden)
        self.output = torch.nn.Linear(hidden, num_domains)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.convs:
            mask = self._mask(x, lengths)
            pooled = (x * mask).sum(1) / mask.sum(1).clamp_min(1)
            return self.output(torch.relu(self.hidden(pooled)))
        h = x * self._mask(x, lengths)  # whatever the padding holds (encoder output past the end), it reads as zeros
        for conv, norm in zip(self.convs, self.norms):
            h = norm(torch.relu(conv(h.transpose(1, 2))).transpose(1, 2))
            if conv.stride[0] > 1:
                lengths = (lengths - 1) // conv.stride[0] + 1
            h = h * self._mask(h, lengths)  # padding stays zero for the next convolution
        mask = self._mask(h, lengths)
        count = mask.sum(1).clamp_min(1)
        mean = (h * mask).sum(1) / count
        var = (((h - mean[:, None]) ** 2) * mask).sum(1) / count
        pooled = torch.cat([mean, var.clamp_min(1e-6).sqrt()], -1)
        return self.output(torch.relu(self.hidden(pooled)))

    @staticmethod
    def _mask(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return (torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]).to(h.dtype).unsqueeze(-1)


def head_input_size(conf: dict, encoder_size: int, feature_size: Optional[int]) -> int:
    """How many dimensions the head reads."""
    if conf["input"] == "encoder":
        return encoder_size
    if feature_size is None:
        raise UserError("model_conf.accent_head_conf.input: features needs the input feature size (--input_size)")
    dims: Optional[List[int]] = conf["feature_dims"]
    if dims is None:
        return feature_size
    if dims[1] > feature_size:
        raise UserError(f"model_conf.accent_head_conf.feature_dims {dims} exceeds the {feature_size} input features")
    return dims[1] - dims[0]
