"""The accent-identification head: HDMoLE's global router, a posterior over the accent domains.

Two shapes, chosen by ``model_conf.accent_head_conf`` (see ``AccentHead``):

* ``layers: 0`` (the default): the time-mean of its input sequence -> hidden -> ReLU -> logits.
* ``layers: N > 0``: a TDNN first, N one-dimensional convolutions over time (kernel 5, dilations
  1, 2, 3, ...; the first with stride 2), each followed by ReLU and a LayerNorm over channels,
  then statistics pooling (mean and standard deviation over the valid frames) -> hidden -> ReLU ->
  logits. The convolutions span about half a second, a syllable or two: enough to see a tone
  contour, which a time-mean of frames cannot keep.

``input`` says what the head reads: ``encoder`` (the speech encoder's output), ``ctc`` (the
posteriors of the model's CTC head over its units, e.g. pinyin initials and finals: what was
said, with little of who said it, so the head learns the accent's sound changes rather than the
training speakers) or ``features`` (the model's normalised input features, e.g. fbank + pitch;
``feature_dims: [start, end]`` restricts it to a slice, e.g. the 3 pitch dimensions [80, 83]).
With ``encoder`` or ``ctc``, ``feature_dims`` appends that slice of the features, average-pooled
to the encoder's frames: e.g. the pitch track beside the CTC posteriors, so that the head hears
both the accent's sound changes and its tone contours. ``feature_frames: k`` keeps k averages of
that slice per encoder frame, side by side (k = 1: one average; the encoder's 60-ms frame then
keeps only the pitch's mean, k = 6: its 10-ms contour).
``crop: c`` (0 < c < 1; 1, the default, turns it off) cuts each utterance, while the head trains,
to a random span of c to 1 times its frames: the head sees other syllables of the same speaker
from one epoch to the next, a regulariser against learning speakers instead of accents. It never
applies to a frozen head or in evaluation.
A head on the features does not depend on the encoder at all, so it can be trained on its own
before any fine-tuning.

The head computes in its parameters' dtype, float32 in a model cast to half precision (the model
puts it back, see LLMASRModel.restore_dtypes), with autocast off: its input is cast up, its
logits and the posterior over them are float32.
"""
from typing import List, Optional

import torch

from espnet_hdmole.errors import UserError
from espnet_hdmole.layers.cpu_dropout import dropout
from espnet_hdmole.layers.precision import autocast_off

KEYS = ("input", "feature_dims", "feature_frames", "layers", "channels", "hidden", "dropout", "crop")
INPUTS = ("encoder", "ctc", "features")


def check_accent_head_conf(conf: Optional[dict]) -> dict:
    """model_conf.accent_head_conf with its defaults; UserError naming the key if it is wrong."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(KEYS))
    if unknown:
        raise UserError(f"model_conf.accent_head_conf has unknown keys {unknown}; known: {list(KEYS)}")
    out = {"input": "encoder", "feature_dims": None, "feature_frames": 1, "layers": 0, "channels": 128, "hidden": 256, "dropout": 0.0,
           "crop": 1.0}
    out.update(conf)
    if out["input"] not in INPUTS:
        raise UserError(f"model_conf.accent_head_conf.input must be one of {list(INPUTS)}, not {out['input']!r}")
    dims = out["feature_dims"]
    if dims is not None and not (
        isinstance(dims, (list, tuple)) and len(dims) == 2 and all(isinstance(d, int) for d in dims) and 0 <= dims[0] < dims[1]
    ):
        raise UserError(f"model_conf.accent_head_conf.feature_dims must be [start, end] with 0 <= start < end, not {dims!r}")
    for key in ("layers", "channels", "hidden", "feature_frames"):
        if not isinstance(out[key], int) or out[key] < (0 if key == "layers" else 1):
            raise UserError(f"model_conf.accent_head_conf.{key} must be a{' non-negative' if key == 'layers' else ' positive'} integer, not {out[key]!r}")
    if not isinstance(out["dropout"], (int, float)) or not 0 <= out["dropout"] < 1:
        raise UserError(f"model_conf.accent_head_conf.dropout must be in [0, 1), not {out['dropout']!r}")
    if isinstance(out["crop"], bool) or not isinstance(out["crop"], (int, float)) or not 0 < out["crop"] <= 1:
        raise UserError(f"model_conf.accent_head_conf.crop must be in (0, 1] (1: no cropping), not {out['crop']!r}")
    return out


class AccentHead(torch.nn.Module):
    """Sequence (B, T, input_size) and lengths -> logits (B, num_domains)."""

    def __init__(self, input_size: int, num_domains: int, hidden: int = 256, layers: int = 0, channels: int = 128,
                 dropout: float = 0.0, crop: float = 1.0):
        super().__init__()
        self.p_drop = dropout  # on the input of every layer, while the head trains (see _drop)
        self.crop = crop  # the shortest share of an utterance kept while the head trains (see _cropped)
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
        with autocast_off(x.device.type):
            return self.logits(x.to(self.output.weight.dtype), lengths)

    def logits(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.crop < 1 and self._trains():
            x, lengths = self._cropped(x, lengths)
        if not self.convs:
            mask = self._mask(x, lengths)
            pooled = (x * mask).sum(1) / mask.sum(1).clamp_min(1)
            return self.output(self._drop(torch.relu(self.hidden(self._drop(pooled)))))
        h = x * self._mask(x, lengths)  # whatever the padding holds (encoder output past the end), it reads as zeros
        for conv, norm in zip(self.convs, self.norms):
            h = norm(torch.relu(conv(self._drop(h).transpose(1, 2))).transpose(1, 2))
            if conv.stride[0] > 1:
                lengths = (lengths - 1) // conv.stride[0] + 1
            h = h * self._mask(h, lengths)  # padding stays zero for the next convolution
        mask = self._mask(h, lengths)
        count = mask.sum(1).clamp_min(1)
        mean = (h * mask).sum(1) / count
        var = (((h - mean[:, None]) ** 2) * mask).sum(1) / count
        pooled = torch.cat([mean, var.clamp_min(1e-6).sqrt()], -1)
        return self.output(self._drop(torch.relu(self.hidden(self._drop(pooled)))))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout in training mode, but only while the head itself trains: a frozen head (the
        HDMoLE systems' global router, trained in step 3) routes the same way in fine-tuning as
        in decoding, although ESPnet's trainer puts the whole model in training mode."""
        return dropout(x, self.p_drop, training=True) if self.p_drop > 0 and self._trains() else x

    def _trains(self) -> bool:
        return self.training and self.output.weight.requires_grad

    def _cropped(self, x: torch.Tensor, lengths: torch.Tensor):
        """Each utterance cut to a random contiguous span of crop to 1 times its length (at least
        one frame), moved to the start; zeros past it."""
        lengths = lengths.to(x.device)
        keep = torch.ceil(lengths * (self.crop + (1 - self.crop) * torch.rand(lengths.shape, device=x.device)))
        keep = torch.minimum(keep.long().clamp_min(1), lengths.clamp_min(1))
        start = ((lengths - keep + 1) * torch.rand(lengths.shape, device=x.device)).long().clamp_max(lengths - keep)
        index = (start[:, None] + torch.arange(x.shape[1], device=x.device)[None]).clamp_max(x.shape[1] - 1)
        out = torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[2]))
        return out * self._mask(out, keep), keep

    @staticmethod
    def _mask(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return (torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]).to(h.dtype).unsqueeze(-1)


def pool_to(x: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T, D) frames -> (B, length, D): each utterance's valid frames average-pooled to its
    target length (e.g. 10-ms features to the encoder's frames); zeros past it."""
    out = x.new_zeros(x.shape[0], length, x.shape[2])
    for b in range(x.shape[0]):
        n, m = int(lengths[b]), int(target[b])
        if n > 0 and m > 0:
            out[b, :m] = torch.nn.functional.adaptive_avg_pool1d(x[b, :n].T[None], m)[0].T
    return out


def head_input(kind: str, h, h_lens, ctc, feats, feats_lens, feature_frames: int = 1):
    """-> (sequence, lengths) the head reads (see the module doc): the normalised features
    (``features``), or the encoder output h (``encoder``) or the CTC head's posteriors over h
    (``ctc``), with the feature slice, if any, pooled to feature_frames averages per frame of h
    and appended."""
    if kind == "features":
        return feats, feats_lens
    # CTC posteriors, not log posteriors: values in [0, 1] (log posteriors of -20 and below
    # killed the TDNN's ReLUs in the first updates: the head stayed at chance)
    x = h if kind == "encoder" else ctc.softmax(h)
    if feats is not None:
        k = feature_frames
        pooled = pool_to(feats, feats_lens, h_lens * k, h.shape[1] * k)
        x = torch.cat([x, pooled.reshape(h.shape[0], h.shape[1], k * feats.shape[2])], dim=-1)
    return x, h_lens


def head_input_size(conf: dict, encoder_size: int, feature_size: Optional[int], ctc_size: Optional[int] = None) -> int:
    """How many dimensions the head reads (ctc_size: the CTC head's output size, None without one)."""
    if conf["input"] == "ctc" and ctc_size is None:
        raise UserError(
            "model_conf.accent_head_conf.input: ctc needs the model's CTC head "
            "(model_conf.ctc_compress other than none, or ctc_weight > 0)"
        )
    base = {"encoder": encoder_size, "ctc": ctc_size, "features": 0}[conf["input"]]
    if conf["input"] != "features" and conf["feature_dims"] is None:
        return base
    if feature_size is None:
        raise UserError("model_conf.accent_head_conf: reading the features (input: features or feature_dims) needs the input feature size (--input_size)")
    dims: Optional[List[int]] = conf["feature_dims"]
    if dims is None:
        return feature_size
    if dims[1] > feature_size:
        raise UserError(f"model_conf.accent_head_conf.feature_dims {dims} exceeds the {feature_size} input features")
    return base + (dims[1] - dims[0]) * (conf["feature_frames"] if conf["input"] != "features" else 1)
