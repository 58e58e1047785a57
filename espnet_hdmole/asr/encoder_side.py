"""The encoder side of ``LLMASRModel`` (a mixin): features, SpecAugment, normalisation and the
encoder, run once per utterance where the encoder is frozen.

Three ways to the encoder output, in ``encode_cached``'s order:
* the stored outputs of the frozen encoder (``encoder_out`` data key, espnet_hdmole.asr.encoder_store),
  checked once per mode against this model's own encoder, ignored when the encoder trains;
* the per-utterance cache (``model_conf.cache_encoder_outputs``, bounded by
  ``model_conf.encoder_cache_mb``: espnet_hdmole.asr.utterance_cache) when the trainer passes ids
  and the encoder is frozen;
* ``encode``.
The data loader gives float32 (numpy has no bfloat16): the features (after normalisation; not a
raw waveform) and the stored outputs are cast to the encoder's dtype, e.g. bfloat16 under
``--train_dtype bfloat16``.
The mixin reads the model's ``frontend``, ``specaug``, ``normalize``, ``encoder``,
``cache_encoder_outputs``, ``_enc_cache``, ``_stored_checked`` and ``_stored_ignored``.
"""
import logging
from typing import Dict, Tuple

import torch

from espnet_hdmole.asr.encoder_store import DATA_NAME as ENCODER_OUT
from espnet_hdmole.asr.encoder_store import check_stored_outputs
from espnet_hdmole.asr.utterance_cache import utterance_keys


def any_trainable(*modules) -> bool:
    """Whether any parameter of the given modules (None ones skipped) requires a gradient. A
    direct walk over the modules' own parameter dicts: ``Module.parameters()`` builds every
    parameter's dotted name, which costs about a millisecond over an encoder, and the training
    step asks several times."""
    stack = [m for m in modules if m is not None]
    while stack:
        m = stack.pop()
        if any(p is not None and p.requires_grad for p in m._parameters.values()):
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


class EncoderSide:
    def encoder_dtype(self) -> torch.dtype:
        """The dtype of the encoder's (first floating-point) parameters."""
        return next((p.dtype for p in self.encoder.parameters() if p.is_floating_point()), torch.float32)

    def encoder_is_frozen(self) -> bool:
        return not any_trainable(self.frontend, self.normalize, self.encoder)

    def cache_keys(self, speech, speech_lengths, utt_id):
        """The utterances' (id, input signature) for the per-utterance caches
        (``utterance_cache.utterance_keys``) where caching is enabled and the encoder is frozen;
        else their (id, None); None where the trainer passed no ids."""
        if utt_id is None:
            return None
        if not (self.cache_encoder_outputs and self.encoder_is_frozen()):
            return [(u, None) for u in utt_id]
        return utterance_keys(utt_id, speech, speech_lengths)

    @staticmethod
    def _may_cache(keys) -> bool:
        """The utterances may be cached (``keys``, from ``cache_keys``, carry their signatures):
        caching is enabled, the trainer passed the ids and the encoder is frozen."""
        return keys is not None and keys[0][1] is not None

    def encode_cached(self, speech, speech_lengths, keys, stored=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``encode``, or the stored outputs ``stored`` = (encoder_out, lengths) of the frozen
        encoder (encoder_store.py) when given and allowed, or the per-utterance cache when it is
        enabled and allowed (``keys``: ``cache_keys``)."""
        if stored is not None and stored[0] is not None:
            if self.training and not self.encoder_is_frozen() and not self._stored_ignored:
                # the encoder trains: its outputs change, in training and in validation
                logging.warning(f"the encoder trains: its stored outputs ('{ENCODER_OUT}') are ignored")
                self._stored_ignored = True
            if not self._stored_ignored:
                if self.training not in self._stored_checked:  # once in train mode, once in eval mode
                    check_stored_outputs(self, speech, speech_lengths, stored[0], stored[1],
                                         None if keys is None else [k[0] for k in keys])
                    self._stored_checked.add(self.training)
                return stored[0].to(speech.device, self.encoder_dtype()), stored[1].to(speech.device)
        if not self._may_cache(keys):
            return self.encode(speech, speech_lengths)
        got = [self._enc_cache.get(*k) for k in keys]
        missing = [i for i, x in enumerate(got) if x is None]
        if missing:
            idx = torch.tensor(missing, device=speech.device)
            h, h_lens = self.encode_frozen(speech[idx], speech_lengths[idx])
            for j, i in enumerate(missing):
                got[i] = h[j, : h_lens[j]].detach().clone()
                self._enc_cache.put(keys[i][0], got[i], keys[i][1])
        hs = [x.to(speech.device) for x in got]
        h_lens = torch.tensor([x.shape[0] for x in hs], device=speech.device)
        return torch.nn.utils.rnn.pad_sequence(hs, batch_first=True), h_lens

    @torch.no_grad()
    def encode_frozen(self, speech, speech_lengths) -> Tuple[torch.Tensor, torch.Tensor]:
        """``encode`` as the frozen encoder: no gradient, no SpecAugment, frontend/normalize/encoder
        in eval mode (their modes are restored after)."""
        modes = [(m, m.training) for m in (self.frontend, self.normalize, self.encoder) if m is not None]
        try:
            for m, _ in modes:
                m.eval()
            return self.encode(speech, speech_lengths, use_specaug=False)
        finally:
            for m, mode in modes:
                m.train(mode)

    def encode(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor, use_specaug: bool = True
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        feats, feats_lengths = self._extract_feats(speech, speech_lengths)
        if use_specaug and self.specaug is not None and self.training:
            feats, feats_lengths = self.specaug(feats, feats_lengths)
        if self.normalize is not None:
            feats, feats_lengths = self.normalize(feats, feats_lengths)
        if feats.dim() == 3:  # features (B, T, D); a waveform (B, samples) is left to whisper's own features
            feats = feats.to(self.encoder_dtype())
        h, h_lens, _ = self.encoder(feats, feats_lengths)
        return h, h_lens

    def _extract_feats(self, speech, speech_lengths):
        speech = speech[:, : speech_lengths.max()]
        if self.frontend is not None:
            return self.frontend(speech, speech_lengths)
        # a copy: ESPnet's GlobalMVN normalises in place, and the caller's batch is read again
        # (the accent head's feature slice after the encoder; model_info's second pass)
        return speech.clone(), speech_lengths

    def collect_feats(self, speech, speech_lengths, text=None, text_lengths=None, **kwargs) -> Dict[str, torch.Tensor]:
        feats, feats_lengths = self._extract_feats(speech, speech_lengths)
        return {"feats": feats, "feats_lengths": feats_lengths}
