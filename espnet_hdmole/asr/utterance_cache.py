"""A per-utterance tensor cache with a memory bound: the frozen encoder's outputs, their
CTC-compressed form and the frozen accent head's logits, kept by utterance id from one epoch to
the next (``LLMASRModel``'s ``model_conf.cache_encoder_outputs``), at most ``encoder_cache_mb``
megabytes each.

An entry also holds the signature of the input (the model's ``speech``) it was computed from
(``utterance_keys``: its length and the sum of its values). An utterance whose input no longer
matches (its id repeats in another set the trainer reads, such as a validation set beside the
training set, or its input changes from one epoch to the next) is computed again; each cache logs
the first such utterance.

When an entry would pass the bound, the least recently used entries go first; what is dropped is
computed again when its utterance comes back. A training set larger than the bound then reads
from the cache less and less (an epoch visits every utterance once), so for data of that size
store the outputs on disk instead (the recipe's stage 4: ``encoder_out`` data, which no cache
needs). The first eviction is logged once, with what to do.
"""
import logging
from collections import OrderedDict
from typing import Hashable, List, Optional, Sequence, Tuple

import torch

from espnet_hdmole.errors import UserError


def tensor_bytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def utterance_keys(utt_id: Sequence[str], speech: torch.Tensor, speech_lengths: torch.Tensor
                   ) -> List[Tuple[str, Tuple[int, float]]]:
    """Each utterance's (id, signature) for a padded batch (B, T, ...), the signature being the
    input's (length, sum of its values up to that length): the same for the same input in any
    batch (the sum runs over the utterance's own frames, whatever the batch's padding). The
    caches read them as ``cache.get(*key)`` and ``cache.put(key[0], x, key[1])``."""
    if len(utt_id) != speech.shape[0] or any(not isinstance(u, str) for u in utt_id):
        raise ValueError(f"utterance_keys needs one id (str) per utterance of the batch ({speech.shape[0]}), "
                         f"got {utt_id!r:.200}")
    lengths = speech_lengths.tolist()
    sums = torch.stack([speech[i, :n].sum(dtype=torch.float64) for i, n in enumerate(lengths)]).tolist()
    return list(zip(utt_id, zip(lengths, sums)))


class UtteranceCache:
    def __init__(self, max_mb: float, name: str = "encoder-output cache"):
        if not isinstance(max_mb, (int, float)) or isinstance(max_mb, bool) or max_mb <= 0:
            raise UserError(f"model_conf.encoder_cache_mb must be a positive number of megabytes, not {max_mb!r}")
        self.max_bytes = int(max_mb * 2**20)
        self.name = name
        self.bytes = 0
        self.evictions = 0
        self.mismatches = 0
        self._items: "OrderedDict[str, Tuple[Hashable, torch.Tensor]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, utt: str) -> bool:
        return utt in self._items

    def __iter__(self):
        return iter(self._items)

    def get(self, utt: str, signature: Hashable = None) -> Optional[torch.Tensor]:
        """The tensor cached for utt from an input of this signature (now the most recently
        used), or None."""
        item = self._items.get(utt)
        if item is None:
            return None
        if item[0] != signature:
            if self.mismatches == 0:
                logging.warning(
                    f"the {self.name}: utterance '{utt}' came with an input other than the one its cached "
                    f"output was computed from (input length and sum {signature} against {item[0]}): its id "
                    "repeats in another set the trainer reads, or its input changes between epochs; such "
                    "outputs are computed again (give each utterance of the training and validation sets "
                    "its own id, or set model_conf.cache_encoder_outputs: false)"
                )
            self.mismatches += 1
            return None
        self._items.move_to_end(utt)
        return item[1]

    def put(self, utt: str, x: torch.Tensor, signature: Hashable = None) -> None:
        """Keep x for utt, computed from an input of this signature (a copy is the caller's
        business), dropping the least recently used entries while the cache holds more than its
        bound; an x larger than the bound is not kept."""
        size = tensor_bytes(x)
        old = self._items.pop(utt, None)
        if old is not None:
            self.bytes -= tensor_bytes(old[1])
        if size > self.max_bytes:
            return
        self._items[utt] = (signature, x)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= tensor_bytes(dropped)
            if self.evictions == 0:
                logging.warning(
                    f"the {self.name} is full ({self.max_bytes / 2**20:.0f} MB, {len(self._items)} utterances): "
                    "the least recently used outputs are dropped and computed again; raise "
                    "model_conf.encoder_cache_mb, or store the frozen encoder's outputs on disk (the recipe's stage 4)"
                )
            self.evictions += 1
