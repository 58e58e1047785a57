"""CTC compression: the encoder output shortened along the CTC head's greedy path, before the
projector (model_conf.ctc_compress of LLMASRModel).

- ``unit``: one position per recognised unit (the mean of its frames; blanks dropped);
- ``syllable``: one position per pinyin syllable, [initial frames' mean; final frames' mean],
  with zeros where a syllable has no initial (or no final).
"""
from typing import Tuple

import torch

from espnet_hdmole.asr.pinyin_units import PinyinUnits


def ctc_compress(ctc, h: torch.Tensor, h_lens: torch.Tensor, mode: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) encoder output -> (B, N, D) for ``unit`` or (B, N, 2D) for ``syllable``, and the
    new lengths. An utterance whose greedy path is all blank keeps one position: its mean."""
    with torch.no_grad():
        labels = ctc.argmax(h)
    out = []
    for b in range(h.shape[0]):
        x, lab = h[b, : h_lens[b]], labels[b, : h_lens[b]]
        keep = lab != 0
        if not bool(keep.any()):
            mean = x.mean(0, keepdim=True)
            out.append(torch.cat([torch.zeros_like(mean), mean], -1) if mode == "syllable" else mean)
            continue
        new = torch.ones_like(keep)
        new[1:] = lab[1:] != lab[:-1]
        starts = keep & new
        seg_id = torch.cumsum(starts, 0) - 1
        n = int(starts.sum())
        total = x.new_zeros(n, x.shape[1]).index_add(0, seg_id[keep], x[keep])
        count = torch.bincount(seg_id[keep], minlength=n).to(x.dtype)
        segs = total / count[:, None]
        out.append(pair_syllables(segs, lab[starts]) if mode == "syllable" else segs)
    lens = torch.tensor([s.shape[0] for s in out], device=h.device)
    return torch.nn.utils.rnn.pad_sequence(out, batch_first=True), lens


def pair_syllables(segs: torch.Tensor, seg_labels: torch.Tensor) -> torch.Tensor:
    """Pinyin unit segments -> one [initial; final] row per syllable (zeros where one is missing).

    A final continues the syllable of the initial right before it; every other segment starts
    a new syllable."""
    initial = seg_labels <= len(PinyinUnits.initials())  # ids 1..len(initials) are initials
    after_initial = torch.zeros_like(initial)
    after_initial[1:] = initial[:-1]
    syl = torch.cumsum(initial | ~after_initial, 0) - 1
    d = segs.shape[1]
    rows = segs.new_zeros(int(syl[-1]) + 1, 2 * d)
    rows[syl[initial], :d] = segs[initial]
    rows[syl[~initial], d:] = segs[~initial]
    return rows
