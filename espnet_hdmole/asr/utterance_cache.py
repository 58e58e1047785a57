"""A per-utterance tensor cache with a memory bound: the frozen encoder's outputs and their
CTC-compressed form, kept by utterance id from one epoch to the next (``LLMASRModel``'s
``model_conf.cache_encoder_outputs``), at most ``encoder_cache_mb`` megabytes each.

When an entry would pass the bound, the least recently used entries go first; what is dropped is
computed again when its utterance comes back. A training set larger than the bound then reads
from the cache less and less (an epoch visits every utterance once), so for data of that size
store the outputs on disk instead (the recipe's stage 4: ``encoder_out`` data, which no cache
needs). The first eviction is logged once, with what to do.
"""
import logging
from collections import OrderedDict
from typing import Optional

import torch

from espnet_hdmole.errors import UserError


def tensor_bytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


class UtteranceCache:
    def __init__(self, max_mb: float, name: str = "encoder-output cache"):
        if not isinstance(max_mb, (int, float)) or isinstance(max_mb, bool) or max_mb <= 0:
            raise UserError(f"model_conf.encoder_cache_mb must be a positive number of megabytes, not {max_mb!r}")
        self.max_bytes = int(max_mb * 2**20)
        self.name = name
        self.bytes = 0
        self.evictions = 0
        self._items: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, utt: str) -> bool:
        return utt in self._items

    def __iter__(self):
        return iter(self._items)

    def get(self, utt: str) -> Optional[torch.Tensor]:
        """The cached tensor (now the most recently used), or None."""
        x = self._items.get(utt)
        if x is not None:
            self._items.move_to_end(utt)
        return x

    def put(self, utt: str, x: torch.Tensor) -> None:
        """Keep x for utt (a copy is the caller's business), dropping the least recently used
        entries while the cache holds more than its bound; an x larger than the bound is not kept."""
        size = tensor_bytes(x)
        old = self._items.pop(utt, None)
        if old is not None:
            self.bytes -= tensor_bytes(old)
        if size > self.max_bytes:
            return
        self._items[utt] = x
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= tensor_bytes(dropped)
            if self.evictions == 0:
                logging.warning(
                    f"the {self.name} is full ({self.max_bytes / 2**20:.0f} MB, {len(self._items)} utterances): "
                    "the least recently used outputs are dropped and computed again; raise "
                    "model_conf.encoder_cache_mb, or store the frozen encoder's outputs on disk (the recipe's stage 4)"
                )
            self.evictions += 1
