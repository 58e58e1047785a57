"""Mandarin initials and finals as CTC units for the speech encoder.

A CTC over the LLM's ~3k characters starves an encoder trained from scratch on a few hours of
speech (each character is seen a handful of times, CTC stays at all-blank). The ~60 toneless
initials and finals of standard Mandarin, read from the transcript with pypinyin, are seen
thousands of times each, and the encoder learns them in a few hundred steps. The units follow the
canonical (standard Mandarin) reading of the text, also for accented speech.

With ``tones=True`` each final carries its tone (1-4, 5 for the neutral tone; 219 units in all): the
encoder then has to keep the pitch contour, which tells apart many homophones of the toneless
units (and is where the demo's accents differ most).
"""
from typing import List, Tuple

from pypinyin import Style, lazy_pinyin
from pypinyin.style._utils import get_finals, get_initials

INITIALS = (
    "b", "c", "ch", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "q", "r", "s", "sh", "t",
    "w", "x", "y", "z", "zh",
)
FINALS = (
    "a", "ai", "an", "ang", "ao", "e", "ei", "en", "eng", "er", "i", "ia", "ian", "iang", "iao", "ie",
    "in", "ing", "iong", "iu", "o", "ong", "ou", "u", "ua", "uai", "uan", "uang", "ue", "ui", "un", "uo",
    "v", "ve", "ê", "m", "n", "ng", "g",
)


class PinyinUnits:
    """Text -> ids of initials and finals (1-based: 0 is the CTC blank), finals with tones if asked."""

    def __init__(self, tones: bool = False):
        self.tones = tones
        finals = [f + str(t) for f in FINALS for t in range(1, 6)] if tones else list(FINALS)
        self.units: List[str] = ["<blank>"] + ["I_" + u for u in INITIALS] + ["F_" + u for u in finals]
        self.index = {u: i for i, u in enumerate(self.units)}

    @staticmethod
    def initials() -> Tuple[str, ...]:
        """The initials: unit ids 1..len(initials()); the finals follow."""
        return INITIALS

    def __len__(self) -> int:
        return len(self.units)

    def tokens(self, text: str) -> List[str]:
        out = []
        style = Style.TONE3 if self.tones else Style.NORMAL
        for syl in lazy_pinyin(text, style=style, neutral_tone_with_five=True, errors="ignore"):
            tone = ""
            if self.tones and syl[-1:].isdigit():
                syl, tone = syl[:-1], syl[-1]
            ini, fin = get_initials(syl, strict=False), get_finals(syl, strict=False)
            if ini:
                out.append("I_" + ini)
            if fin:
                out.append("F_" + fin + tone)
        return out

    def encode(self, text: str) -> List[int]:
        """Characters without a Mandarin reading (digits, Latin letters) give no units."""
        return [self.index[t] for t in self.tokens(text) if t in self.index]
