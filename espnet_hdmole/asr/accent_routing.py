"""The accent side of ``LLMASRModel`` (a mixin): the accent head's logits (HDMoLE's global router,
espnet_hdmole.asr.accent_head) and the domain posterior the HDMoLE layers read, the head's
(``global_router: predicted``) or the one-hot accent labels (``oracle``).

The mixin reads the model's ``accent_head``, ``accent_head_input``, ``accent_head_dims``,
``accent_head_frames``, ``accent_list``, ``ctc``, ``normalize`` and ``_aid_cache`` (the frozen
head's logits per utterance), and the encoder side's ``_extract_feats``, ``cache_keys``,
``_may_cache`` and ``encode_cached`` (espnet_hdmole.asr.encoder_side).
"""
from typing import Optional, Tuple

import torch

from espnet_hdmole.asr.accent_head import head_input
from espnet_hdmole.asr.encoder_side import any_trainable
from espnet_hdmole.errors import UserError
from espnet_hdmole.layers.create_hdmole_adapter import hdmole_layers
from espnet_hdmole.layers.routing import oracle_posterior


class AccentRouting:
    def global_router_mode(self, layers=None) -> Optional[str]:
        """'predicted' or 'oracle' when HDMoLE layers need a domain posterior, else None.
        ``layers``: ``hdmole_layers(self)`` when the caller has it."""
        layers = hdmole_layers(self) if layers is None else layers
        modes = {m.global_router for _, m in layers if m.global_router != "none"}
        if len(modes) > 1:
            raise ValueError(f"HDMoLE layers disagree on global_router: {sorted(modes)}")
        return modes.pop() if modes else None

    def accent_logits(self, speech, speech_lengths, h, h_lens) -> Optional[torch.Tensor]:
        """The accent head's logits (None without a head), from the encoder output h, the CTC
        head's posteriors over h, or the normalised input features (accent_head_conf.input); a
        slice of the features (feature_dims) is appended, pooled to h's frames, to the first two."""
        if self.accent_head is None:
            return None
        feats = lens = None
        if self.accent_head_input == "features" or self.accent_head_dims is not None:
            feats, lens = self._extract_feats(speech, speech_lengths)
            if self.normalize is not None:
                feats, lens = self.normalize(feats, lens)
            if self.accent_head_dims is not None:
                feats = feats[..., self.accent_head_dims[0] : self.accent_head_dims[1]]
        return self.accent_head(*head_input(self.accent_head_input, h, h_lens, self.ctc, feats, lens, self.accent_head_frames))

    def cached_accent_logits(self, speech, speech_lengths, h, h_lens, keys=None) -> Optional[torch.Tensor]:
        """``accent_logits``, kept per utterance (``keys``: the encoder side's ``cache_keys``)
        while the head, the CTC head and the encoder are frozen and the encoder-output cache is
        enabled."""
        if self.accent_head is None or not self._may_cache(keys) or any_trainable(self.accent_head, self.ctc):
            return self.accent_logits(speech, speech_lengths, h, h_lens)
        got = [self._aid_cache.get(*k) for k in keys]
        if all(x is not None for x in got):
            return torch.stack(got).to(speech.device)
        logits = self.accent_logits(speech, speech_lengths, h, h_lens)
        for (u, sig), x in zip(keys, logits.detach()):
            self._aid_cache.put(u, x.clone(), sig)
        return logits

    @torch.no_grad()
    def predict_accent(self, speech: torch.Tensor, speech_lengths: torch.Tensor, utt_id=None,
                       encoder_out=None, encoder_out_lengths=None) -> Optional[torch.Tensor]:
        """The accent head's logits for a batch (None without a head); encodes only if the head
        reads the encoder output or the CTC posteriors, through the encoder-output cache when
        ``utt_id`` is given, or reads the stored encoder outputs when given."""
        h = h_lens = None
        if self.accent_head is not None and self.accent_head_input != "features":
            keys = self.cache_keys(speech, speech_lengths, utt_id)
            h, h_lens = self.encode_cached(speech, speech_lengths, keys, (encoder_out, encoder_out_lengths))
        return self.accent_logits(speech, speech_lengths, h, h_lens)

    def domain_posterior(
        self, speech, speech_lengths, h: torch.Tensor, h_lens: torch.Tensor, accent: Optional[torch.Tensor],
        layers=None, keys=None,
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(accent logits or None, the posterior the HDMoLE layers read or None). With ``keys``
        (the encoder side's ``cache_keys``)
        and a frozen head on a frozen encoder (the systems that route with step 3's head), each
        utterance's logits are computed once and kept: the head then gives the same output in
        every epoch (no crop or dropout while it does not train)."""
        logits = self.cached_accent_logits(speech, speech_lengths, h, h_lens, keys)
        mode = self.global_router_mode(layers)
        if mode is None:
            return logits, None
        if mode == "oracle":
            if accent is None:
                raise UserError("global_router: oracle needs accent labels (an 'accent' data file, e.g. utt2accent)")
            return logits, oracle_posterior(accent.reshape(-1), len(self.accent_list)).to(speech.device)
        if logits is None:
            raise UserError(
                "global_router: predicted needs the accent head: set model_conf.aid_weight > 0 "
                "or model_conf.use_accent_head: true"
            )
        return logits, torch.softmax(logits, dim=-1)
