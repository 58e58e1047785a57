"""The frozen encoder's outputs on disk: computed once per data set, read by every system.

Every stage-5 system and every stage-6 decoding starts from the same frozen source encoder, so
its outputs are written once, as a Kaldi ark/scp pair with a shape file:

    <dir>/encoder_out.ark, <dir>/encoder_out.scp   uid -> (frames, encoder dim) float32
    <dir>/encoder_out_shape                         uid frames,dim

A training or decoding run reads them as the data key ``encoder_out`` (type kaldi_ark).
``LLMASRModel`` then skips its encoder, after checking on one utterance of the first batch (in
each of train and eval mode) that its own encoder gives the same output: outputs of another or
an older encoder are refused, never used.
"""
import logging
import os
from pathlib import Path

import kaldiio
import numpy as np
import torch

from espnet_hdmole.errors import UserError

DATA_NAME = "encoder_out"
# relative Frobenius difference allowed between a stored output and the model's own (both are
# computed one utterance at a time; another encoder differs by ~100%)
TOLERANCE = 1e-3


def write_encoder_outputs(model, feats_scp: Path, out_dir: Path, log_every: int = 500) -> int:
    """Encode every utterance of ``feats_scp`` with ``model.encode_frozen``, one at a time (so
    that an output does not depend on the padding of a batch; on a CPU this is as fast as
    batches of 16), and write the ark/scp/shape files under ``out_dir``, under temporary names
    renamed at the end. Returns the number of utterances."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = {n: out_dir / f".{n}.tmp" for n in ("encoder_out.ark", "encoder_out.scp", "encoder_out_shape")}
    n = 0
    with kaldiio.WriteHelper(f"ark,scp:{tmp['encoder_out.ark']},{tmp['encoder_out.scp']}") as writer, \
            open(tmp["encoder_out_shape"], "w", encoding="utf-8") as shapes:
        for uid, x in kaldiio.load_scp_sequential(str(feats_scp)):
            x = torch.tensor(np.asarray(x, dtype=np.float32))[None]
            h, h_lens = model.encode_frozen(x, torch.tensor([x.shape[1]]))
            h = h[0, : h_lens[0]].float().cpu().numpy()
            writer(uid, h)
            shapes.write(f"{uid} {h.shape[0]},{h.shape[1]}\n")
            n += 1
            if n % log_every == 0:
                logging.info(f"{feats_scp}: {n} utterances encoded")
    # the scp names the temporary ark: point it at the final name before the renames
    scp = tmp["encoder_out.scp"].read_text(encoding="utf-8").replace(
        str(tmp["encoder_out.ark"]), str(out_dir / "encoder_out.ark"))
    tmp["encoder_out.scp"].write_text(scp, encoding="utf-8")
    for name, path in tmp.items():
        os.replace(path, out_dir / name)
    return n


def check_stored_outputs(model, speech, speech_lengths, stored: torch.Tensor, stored_lengths: torch.Tensor,
                         utt_id=None) -> None:
    """Raise a UserError unless ``model``'s encoder reproduces the stored output of the batch's
    first utterance (shape, and values within TOLERANCE)."""
    name = utt_id[0] if utt_id is not None else "the first utterance of the batch"
    h, h_lens = model.encode_frozen(speech[:1], speech_lengths[:1])
    mine, theirs = h[0, : h_lens[0]].float(), stored[0, : stored_lengths[0]].float()
    fix = ("they are stale or come from another source model: recompute them (stage 4 of the recipe, "
           "or espnet_hdmole.bin.dump_encoder_outputs with this model)")
    if mine.shape != theirs.shape:
        raise UserError(f"stored encoder outputs ('{DATA_NAME}') of {name} have shape {tuple(theirs.shape)}, "
                        f"this model's encoder gives {tuple(mine.shape)}: {fix}")
    diff = float((mine - theirs).norm() / mine.norm().clamp_min(1e-12))
    if diff > TOLERANCE:
        raise UserError(f"stored encoder outputs ('{DATA_NAME}') of {name} differ from this model's encoder output "
                        f"by {diff:.1%} (allowed {TOLERANCE:.1%}): {fix}")
