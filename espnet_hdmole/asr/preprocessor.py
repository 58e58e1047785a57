"""Turns a data item's transcript into LLM token ids and its accent label into a domain index."""
from typing import Dict, List, Optional, Union

import numpy as np
from espnet2.train.preprocessor import AbsPreprocessor

from espnet_hdmole.asr.llm_utils import load_tokenizer, unencodable_chars
from espnet_hdmole.asr.pinyin_units import PinyinUnits

MAX_CACHED_TEXTS = 1 << 20  # distinct transcripts kept encoded (KeSpeech's training set has fewer)


class LLMASRPreprocessor(AbsPreprocessor):
    def __init__(
        self,
        train: bool,
        llm_dir: str,
        accent_list: Optional[List[str]] = None,
        text_name: str = "text",
        accent_name: str = "accent",
        pinyin_ctc: bool = False,
        pinyin_tones: bool = False,
    ):
        super().__init__(train)
        self.tokenizer = load_tokenizer(llm_dir)
        self.llm_dir = llm_dir
        self.accent_index = {a: i for i, a in enumerate(accent_list or [])}
        self.text_name, self.accent_name = text_name, accent_name
        # the CTC targets (initials/finals) go beside the LLM ids as '<text_name>_ctc'
        self.pinyin = PinyinUnits(pinyin_tones) if pinyin_ctc else None
        self._encoded: Dict[str, tuple] = {}  # transcript -> (LLM ids, CTC units): every epoch reads them again

    def _encode(self, text: str) -> tuple:
        hit = self._encoded.get(text)
        if hit is None:
            hit = (self.tokenizer(text, add_special_tokens=False)["input_ids"],
                   None if self.pinyin is None else self.pinyin.encode(text))
            if len(self._encoded) < MAX_CACHED_TEXTS:
                self._encoded[text] = hit
        return hit

    def __call__(self, uid: str, data: Dict[str, Union[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        if self.text_name in data and isinstance(data[self.text_name], str):
            text = data[self.text_name].strip()
            if not text:
                raise ValueError(f"utterance '{uid}' has an empty transcript")
            ids, units = self._encode(text)
            if self.tokenizer.unk_token_id is not None and self.tokenizer.unk_token_id in ids:
                raise ValueError(
                    f"utterance '{uid}': the tokenizer of {self.llm_dir} cannot encode "
                    f"{unencodable_chars(self.tokenizer, text)!r}"
                )
            data[self.text_name] = np.asarray(ids, dtype=np.int64)
            if self.pinyin is not None:
                data[self.text_name + "_ctc"] = np.asarray(units, dtype=np.int64)
        if self.accent_name in data and isinstance(data[self.accent_name], str):
            label = data[self.accent_name].strip()
            if label not in self.accent_index:
                raise ValueError(
                    f"utterance '{uid}' has accent label '{label}', not one of model_conf.accent_list "
                    f"{list(self.accent_index)}"
                )
            data[self.accent_name] = np.asarray([self.accent_index[label]], dtype=np.int64)
        return data
