"""LLM-based ASR as an ESPnet model: speech encoder -> projector -> causal LLM.

    speech --frontend/normalize--> feats --encoder--> h (B, T, d_enc)
    h --projector (stack k, MLP)--> s (B, T/k, d_llm)
    LLM(inputs_embeds = [prompt_prefix] [s] [prompt] [transcript] <eos>)   loss on transcript + eos

The accent-identification head (HDMoLE's global router, espnet_hdmole.asr.accent_head) maps the
encoder output or the input features to a posterior over the accent domains (cross-entropy with weight ``aid_weight`` against the
``accent`` labels when the batch has them; espnet_hdmole.asr.accent_routing). Whenever the model holds HDMoLE layers, the
projector and the LLM run inside ``espnet_hdmole.domain_posterior(g)``, with g the head's
posterior (``global_router: predicted``) or the one-hot labels (``oracle``).
"""
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from espnet2.asr.ctc import CTC
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.specaug.abs_specaug import AbsSpecAug
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_hdmole.asr.accent_head import AccentHead, check_accent_head_conf, head_input_size
from espnet_hdmole.asr.accent_routing import AccentRouting
from espnet_hdmole.asr.ctc_compression import ctc_compress
from espnet_hdmole.asr.encoder_side import EncoderSide, any_trainable
from espnet_hdmole.asr.encoder_store import DATA_NAME as ENCODER_OUT
from espnet_hdmole.asr.llm_utils import (
    load_causal_lm, load_tokenizer, noise_token_ids, readable_tokens, unencodable_chars)
from espnet_hdmole.asr.pinyin_units import PinyinUnits
from espnet_hdmole.asr.projector import FrameStackProjector
from espnet_hdmole.asr.utterance_cache import UtteranceCache
from espnet_hdmole.errors import UserError
from espnet_hdmole.layers.create_hdmole_adapter import (
    hdmole_aux_loss, hdmole_layers, hdmole_statistics, keep_adapters_fp32, mark_positions)
from espnet_hdmole.layers.group_mixture import parameters_fixed
from espnet_hdmole.layers.precision import lora_to_base_dtype, params_to_fp32
from espnet_hdmole.layers.routing import domain_posterior, position_kinds

LLM_DTYPES = (None, "float32", "bfloat16", "float16")


def _under(layers, prefix: str):
    """The (name, layer) pairs of ``layers`` inside the submodule ``prefix`` (None stays None)."""
    return None if layers is None else [(n, m) for n, m in layers if n.startswith(prefix)]


class LLMASRModel(EncoderSide, AccentRouting, AbsESPnetModel):
    """Speech encoder -> projector -> causal LLM, trained with the ESPnet trainer.

    Args:
        frontend, specaug, normalize, encoder: ESPnet components (built by the task from ClassChoices).
        llm_dir: local directory of a ``transformers`` causal LM and its tokenizer.
        accent_list: the accent domains, in the order of the global router's outputs.
        projector_conf: FrameStackProjector settings (stack, hidden_size).
        prompt_prefix: text placed before the speech embeddings.
        prompt: text placed between the speech embeddings and the transcript.
        aid_weight: weight of the accent-ID cross-entropy.
        use_accent_head: build the accent head (default: when aid_weight > 0).
        accent_head_hidden: its hidden size (the default of accent_head_conf.hidden).
        accent_head_conf: its shape and input (espnet_hdmole.asr.accent_head): input (encoder |
            features), feature_dims, layers (0: mean pooling; N: a TDNN and statistics pooling),
            channels, hidden.
        feature_size: the input feature dimension (set by the task from --input_size or the
            frontend), read by an accent head on the features.
        llm_dtype: the dtype of the LLM's weights (float32, bfloat16, float16), kept through the
            trainer's and the decoder's casts (``restore_dtypes``); None: the model's dtype.
        frame_shift: seconds per input frame (for the real-time factor; 1/fs for raw audio).
        cache_encoder_outputs: when the frontend, normalize and encoder are all frozen, keep each
            utterance's encoder output (computed once, in eval mode, without gradients) in memory
            by utterance id and reuse it in later epochs (SpecAugment is then not applied). The
            trainer passes the ids; an utterance whose input differs from the one its output was
            cached for (an id repeated across sets) is computed again (utterance_cache.py).
        encoder_cache_mb: the bound of that cache, of the one of its CTC-compressed form and of
            the frozen accent head's outputs, in megabytes each (espnet_hdmole.asr.utterance_cache:
            least recently used out first).
        ctc_weight: weight of an auxiliary CTC loss on the encoder output. It gives an encoder
            trained from scratch a direct signal; 0 adds no CTC loss (and builds no CTC head unless
            ctc_compress needs one).
        ctc_units: what the CTC predicts: "llm" (the LLM's vocabulary; id 0 is the blank, token
            ids shift by one) or "pinyin" (the ~60 Mandarin initials and finals of the transcript,
            espnet_hdmole.asr.pinyin_units; the preprocessor adds them as 'text_ctc') or
            "pinyin_tone" (the same with the tone on each final). On a few hours of speech only
            the pinyin units leave CTC's all-blank plateau quickly.
        asr_weight: weight of the LLM's transcript loss. 0 skips the projector and the LLM
            altogether (encoder pre-training with CTC alone, which needs ctc_weight > 0).
        ctc_compress: "none", or shorten the encoder output with the CTC head's greedy path
            before the projector: "unit" averages the frames of each run of one non-blank label
            (blank frames are dropped), so the LLM sees about one position per CTC unit, in order;
            "syllable" (pinyin CTC units) then pairs each initial with the final after it into one
            position [initial; final] (zeros for a missing initial or final), about one per character. An
            utterance with no non-blank frame keeps the mean of all its frames. The CTC head comes
            from the encoder's pre-training (--init_param ...:ctc:ctc); with ctc_weight 0 it is frozen.
        token_dropout: in training, the probability that a transcript token fed to the LLM (teacher
            forcing; the targets stay) is replaced by a random token of the vocabulary, so that the
            LLM cannot predict from the text history alone and has to read the speech.
        adapter_scope: the parts of the model that --adapter (hdmole, lora) may put adapters into;
            modules elsewhere that match adapter_conf.target_modules are left alone (a Whisper
            encoder's q_proj/k_proj/v_proj share their names with the LLM's). Add "encoder" to
            adapt a trainable speech encoder (espnet_hdmole.layers.adapter_scope).
    """

    def __init__(
        self,
        frontend: Optional[AbsFrontend],
        specaug: Optional[AbsSpecAug],
        normalize: Optional[AbsNormalize],
        encoder: AbsEncoder,
        llm_dir: str,
        accent_list: Optional[List[str]] = None,
        projector_conf: Optional[dict] = None,
        prompt_prefix: str = "",
        prompt: str = "",
        aid_weight: float = 0.0,
        use_accent_head: Optional[bool] = None,
        accent_head_hidden: int = 256,
        accent_head_conf: Optional[dict] = None,
        feature_size: Optional[int] = None,
        llm_dtype: Optional[str] = None,
        frame_shift: float = 0.01,
        cache_encoder_outputs: bool = False,
        encoder_cache_mb: float = 4096,
        ctc_weight: float = 0.0,
        ctc_units: str = "llm",
        asr_weight: float = 1.0,
        ctc_compress: str = "none",
        token_dropout: float = 0.0,
        adapter_scope: Sequence[str] = ("projector", "llm"),
    ):
        super().__init__()
        self.frontend = frontend
        self.specaug = specaug
        self.normalize = normalize
        self.encoder = encoder
        if llm_dtype not in LLM_DTYPES:
            raise UserError(f"model_conf.llm_dtype must be one of {list(LLM_DTYPES)}, not {llm_dtype!r}")
        self.llm_dtype = llm_dtype
        self.llm = load_causal_lm(llm_dir, llm_dtype or "float32")
        # the model's keys that llm_dir supplies (adapters added later keep these names)
        self.llm_dir_keys = frozenset("llm." + k for k in self.llm.state_dict())
        self.tokenizer = load_tokenizer(llm_dir)
        d_llm = self.llm.get_input_embeddings().embedding_dim
        if ctc_compress not in ("none", "unit", "syllable"):
            raise UserError(f"model_conf.ctc_compress must be 'none', 'unit' or 'syllable', not {ctc_compress!r}")
        if ctc_compress == "syllable" and ctc_units == "llm":
            raise UserError("model_conf.ctc_compress: syllable needs model_conf.ctc_units: pinyin or pinyin_tone")
        self.ctc_compress = ctc_compress
        if not 0.0 <= token_dropout < 1.0:
            raise UserError(f"model_conf.token_dropout must be in [0, 1), got {token_dropout}")
        self.token_dropout = token_dropout
        if token_dropout > 0:  # its draws: ordinary tokens only; a buffer moves with the model, not saved
            n_emb = self.llm.get_input_embeddings().num_embeddings
            self.register_buffer("_noise_ids", noise_token_ids(self.tokenizer, n_emb), persistent=False)
        proj_in = encoder.output_size() * (2 if ctc_compress == "syllable" else 1)
        self.projector = FrameStackProjector(proj_in, d_llm, **(projector_conf or {}))
        self.accent_list = list(accent_list or [])
        self.aid_weight = aid_weight
        if use_accent_head is None:
            use_accent_head = aid_weight > 0
        if use_accent_head and len(self.accent_list) < 2:
            raise UserError("model_conf.accent_list needs at least 2 domains for the accent head")
        self.frame_shift = frame_shift
        self.ctc_weight = ctc_weight
        if ctc_units not in ("llm", "pinyin", "pinyin_tone"):
            raise UserError(f"model_conf.ctc_units must be 'llm', 'pinyin' or 'pinyin_tone', not {ctc_units!r}")
        self.ctc_units = ctc_units
        if asr_weight < 0 or (asr_weight == 0 and ctc_weight <= 0 and aid_weight <= 0):
            raise UserError(
                f"model_conf.asr_weight must be > 0, or 0 together with ctc_weight > 0 (CTC-only "
                f"encoder training) or aid_weight > 0 (accent-ID training); got asr_weight={asr_weight}, "
                f"ctc_weight={ctc_weight}, aid_weight={aid_weight}"
            )
        self.asr_weight = asr_weight
        n_ctc = len(PinyinUnits(ctc_units == "pinyin_tone")) if ctc_units != "llm" else len(self.tokenizer) + 1
        use_ctc = ctc_weight > 0 or ctc_compress != "none"
        self.ctc = CTC(odim=n_ctc, encoder_output_size=encoder.output_size()) if use_ctc else None
        if ctc_compress != "none" and ctc_weight <= 0:
            self.ctc.requires_grad_(False)
        head_conf = check_accent_head_conf({"hidden": accent_head_hidden, **(accent_head_conf or {})})
        self.accent_head_input, self.accent_head_dims = head_conf["input"], head_conf["feature_dims"]
        self.accent_head_frames = head_conf["feature_frames"]
        self.accent_head = (
            AccentHead(head_input_size(head_conf, encoder.output_size(), feature_size,
                                       n_ctc if use_ctc else None), len(self.accent_list),
                       head_conf["hidden"], head_conf["layers"], head_conf["channels"], head_conf["dropout"], head_conf["crop"])
            if use_accent_head else None
        )
        self.cache_encoder_outputs = cache_encoder_outputs
        self._enc_cache = UtteranceCache(encoder_cache_mb)
        self._cmp_cache = UtteranceCache(encoder_cache_mb, "CTC-compressed encoder-output cache")
        self._aid_cache = UtteranceCache(encoder_cache_mb, "accent-head output cache")  # frozen head only
        self._stored_checked, self._stored_ignored = set(), False  # stored encoder outputs: see encode_cached
        self.eos_id = self.tokenizer.eos_token_id
        for name, text in (("prompt_prefix", prompt_prefix), ("prompt", prompt)):
            bad = unencodable_chars(self.tokenizer, text) if text else ""
            if bad:
                raise UserError(f"model_conf.{name} {text!r} has characters the tokenizer of {llm_dir} cannot encode: {bad!r}")
        self.register_buffer("prefix_ids", self._encode(prompt_prefix), persistent=False)
        self.register_buffer("prompt_ids", self._encode(prompt), persistent=False)
        parts = [n for n, _ in self.named_children()]
        if not isinstance(adapter_scope, (list, tuple)) or not all(p in parts for p in adapter_scope):
            raise UserError(f"model_conf.adapter_scope must be a list of the model's parts {parts}, "
                            f"not {adapter_scope!r}")
        self.adapter_scope = tuple(adapter_scope)

    def restore_dtypes(self) -> None:
        """After a cast of the whole model (ESPnet's --train_dtype, the decoder's --dtype): the
        LLM's own weights (those of llm_dir; not an adapter's) back in ``llm_dtype`` when it is
        set, the HDMoLE adapters' parameters and the accent head back in float32 if the cast made
        them half precision, and ESPnet's LoRA in its base layers' dtype (espnet_hdmole.layers.precision)."""
        if self.llm_dtype is not None:
            for name, p in self.named_parameters():
                if name in self.llm_dir_keys and p.is_floating_point():
                    p.data = p.data.to(getattr(torch, self.llm_dtype))
        keep_adapters_fp32(self)
        lora_to_base_dtype(self)
        if self.accent_head is not None:
            params_to_fp32(self.accent_head.parameters())

    def _encode(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return torch.tensor(ids, dtype=torch.long)

    def compress(self, h: torch.Tensor, h_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Shorten the encoder output along the CTC head's greedy path (see ``ctc_compress``)."""
        return ctc_compress(self.ctc, h, h_lens, self.ctc_compress)

    def project(self, h: torch.Tensor, h_lens: torch.Tensor, keys=None,
                layers=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encoder output -> LLM input embeddings (CTC compression first when enabled; its result
        is cached per utterance, ``keys`` being ``cache_keys``, along with the encoder output's)."""
        if self.ctc_compress != "none":
            cached = self._may_cache(keys) and not any_trainable(self.ctc)
            xs = [self._cmp_cache.get(*k) for k in keys] if cached else [None]
            if all(x is not None for x in xs):
                xs = [x.to(h.device) for x in xs]
                h, h_lens = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True), torch.tensor(
                    [x.shape[0] for x in xs], device=h.device)
            else:
                h, h_lens = self.compress(h, h_lens)
                if cached:
                    for b, (u, sig) in enumerate(keys):
                        self._cmp_cache.put(u, h[b, : h_lens[b]].detach().clone(), sig)
        s, s_lens = self.projector(h, h_lens)
        # routing statistics of the projector's HDMoLE layers: its valid positions only
        mark_positions(self.projector, position_kinds(s.shape[1], s_lens), _under(layers, "projector."))
        return s, s_lens

    # ------------------------------------------------------------------ LLM side
    def _context_embeddings(self, s: torch.Tensor, s_lens: torch.Tensor,
                            tokens: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
        """Per utterance: [prefix] [speech] [prompt] embeddings, (L_b, d_llm), in the LLM's dtype,
        followed by the embeddings of the utterance's ``tokens`` where given. The prefix, the prompt
        and every utterance's tokens are looked up in one call: where the table is trained (full
        fine-tuning, the source model), each call's backward writes a dense gradient of the whole
        table (one call per utterance made a demo step of full fine-tuning ~3% slower)."""
        emb = self.llm.get_input_embeddings()
        tokens = tokens or []
        parts = [self.prefix_ids, self.prompt_ids, *tokens]
        looked_up = emb(torch.cat(parts)).split([len(x) for x in parts])
        pre, post, s = looked_up[0], looked_up[1], s.to(emb.weight.dtype)
        return [torch.cat([pre, s[b, : s_lens[b]], post, *looked_up[2 + b:3 + b]], 0) for b in range(s.shape[0])]

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        accent: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        batch_size = speech.shape[0]
        uses_ctc = self.ctc is not None and self.ctc_weight > 0
        keys = self.cache_keys(speech, speech_lengths, kwargs.get("utt_id"))
        if self.asr_weight > 0 or uses_ctc or self.accent_head_input != "features":
            stored = (kwargs.get(ENCODER_OUT), kwargs.get(ENCODER_OUT + "_lengths"))
            h, h_lens = self.encode_cached(speech, speech_lengths, keys, stored)
        else:  # accent-ID training of a head on the features: the encoder is not needed
            h, h_lens = None, None
        layers = hdmole_layers(self)  # once per step: walking the model's modules costs milliseconds
        logits_aid, g = self.domain_posterior(speech, speech_lengths, h, h_lens, accent, layers, keys)
        stats: Dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=speech.device)
        if self.asr_weight > 0:
            with domain_posterior(g) if g is not None else nullcontext():
                s, s_lens = self.project(h, h_lens, keys, layers)
                loss_asr, acc = self._llm_loss(s, s_lens, text, text_lengths, layers)
            loss = self.asr_weight * loss_asr
            stats["loss_asr"] = loss_asr.detach()
            stats["acc"] = acc
        if uses_ctc:
            if self.ctc_units != "llm":
                if "text_ctc" not in kwargs:
                    raise ValueError(
                        f"model_conf.ctc_units: {self.ctc_units} needs the preprocessor's 'text_ctc' targets "
                        "(use_preprocessor: true)"
                    )
                ys, ys_lens = kwargs["text_ctc"], kwargs["text_ctc_lengths"]
            else:
                ys, ys_lens = torch.where(text >= 0, text + 1, text), text_lengths  # blank = 0
            loss_ctc = self.ctc(h, h_lens, ys, ys_lens)
            stats["loss_ctc"] = loss_ctc.detach()
            loss = loss + self.ctc_weight * loss_ctc
        if logits_aid is not None and accent is not None:
            accent = accent.reshape(-1).long()
            loss_aid = torch.nn.functional.cross_entropy(logits_aid.float(), accent)
            stats["loss_aid"] = loss_aid.detach()
            stats["acc_aid"] = (logits_aid.argmax(-1) == accent).float().mean()
            if self.aid_weight > 0:
                loss = loss + self.aid_weight * loss_aid
        aux = hdmole_aux_loss(self, layers)
        if aux is not None:
            loss = loss + aux
        stats.update(hdmole_statistics(self, layers=layers))
        stats["loss"] = loss.detach()
        loss, stats, weight = force_gatherable((loss, stats, batch_size), loss.device)
        return loss, stats, weight

    def _llm_loss(self, s, s_lens, text, text_lengths, layers=None):
        eos = torch.full((1,), self.eos_id, dtype=torch.long, device=s.device)
        tokens, targets = [], []
        for b in range(s.shape[0]):
            tgt = torch.cat([text[b, : text_lengths[b]].long(), eos])
            inp = tgt[:-1]
            if self.training and self.token_dropout > 0:
                pick = torch.randint(len(self._noise_ids), inp.shape, device=inp.device)
                noise = self._noise_ids[pick]  # ordinary tokens only
                inp = torch.where(torch.rand(inp.shape, device=inp.device) < self.token_dropout, noise, inp)
            tokens.append(inp)
            targets.append(tgt)
        seqs = self._context_embeddings(s, s_lens, tokens)
        # position j predicts token j+1: targets start at the last context position
        targets = [torch.cat([torch.full((len(x) - len(t),), -100, device=s.device), t]) for x, t in zip(seqs, targets)]
        lens = torch.tensor([x.shape[0] for x in seqs], device=s.device)
        inputs = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        labels = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=-100)
        mask = (torch.arange(inputs.shape[1], device=s.device)[None] < lens[:, None]).long()
        out = self.llm.base_model(inputs_embeds=inputs, attention_mask=mask, use_cache=False)
        # routing statistics of the LLM's HDMoLE layers: speech and text positions, no padding
        mark_positions(self.llm, position_kinds(inputs.shape[1], lens, len(self.prefix_ids), s_lens),
                       _under(layers, "llm."))
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        sel = labels != -100
        logits = self.llm.get_output_embeddings()(hidden[sel]).float()
        tgt = labels[sel]
        loss = torch.nn.functional.cross_entropy(logits, tgt)
        acc = (logits.argmax(-1) == tgt).float().mean()
        return loss, acc.detach()

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def recognize(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        accent: Optional[torch.Tensor] = None,
        beam_size: int = 1,
        max_new_tokens: int = 128,
        length_penalty: float = 1.0,
        encoder_out: Optional[torch.Tensor] = None,
        encoder_out_lengths: Optional[torch.Tensor] = None,
        ngram=None,
        ngram_weight: float = 0.0,
    ) -> List[Dict]:
        """Decode a batch. Returns per utterance {'token_ids', 'text', 'score', 'accent'}.
        ``encoder_out``/``encoder_out_lengths``: the encoder's stored outputs (encoder_store.py),
        checked on the first batch, then used instead of the encoder. ``ngram``: an n-gram scorer
        over the LLM's tokens (espnet_hdmole.lm.ngram_scorer) fused with ``ngram_weight``."""
        from espnet_hdmole.asr.decoding import beam_search, greedy_search

        h, h_lens = self.encode_cached(speech, speech_lengths, None, (encoder_out, encoder_out_lengths))
        logits_aid, g = self.domain_posterior(speech, speech_lengths, h, h_lens, accent)
        with domain_posterior(g) if g is not None else nullcontext():
            s, s_lens = self.project(h, h_lens)
        ctx = self._context_embeddings(s, s_lens)
        with parameters_fixed():  # the HDMoLE layers check their packed weights once, not at every token
            if beam_size <= 1:
                hyps = greedy_search(self.llm, ctx, self.eos_id, max_new_tokens, g, ngram, ngram_weight)
            else:
                hyps = beam_search(self.llm, ctx, self.eos_id, max_new_tokens, beam_size, length_penalty, g,
                                   ngram, ngram_weight)
        out = []
        for b, (ids, score) in enumerate(hyps):
            r = {"token_ids": ids, "text": self.tokenizer.decode(ids, skip_special_tokens=True), "score": score,
                 "tokens": readable_tokens(self.tokenizer, ids)}
            if logits_aid is not None and self.accent_list:
                r["accent"] = self.accent_list[int(logits_aid[b].argmax())]
            out.append(r)
        return out
