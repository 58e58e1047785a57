"""Transcript normalisation for KeSpeech-style text: tags and punctuation out, the rest kept.

Tags are spans in < > [ ] ( ) { } (or the full-width ＜ ＞ ［ ］ ｛ ｝) with no such bracket
inside, e.g. <SPOKEN_NOISE>, [laughter], (noise), {breath}: they are removed with their content.
A transcript that still holds one of these brackets afterwards (an unclosed tag such as
<SPOKEN_NOISE, a stray or nested bracket) is malformed: normalize_text raises MalformedTag, and
prepare_kespeech.py refuses it with its file:line. Punctuation of any script (the Chinese
brackets （）【】《》 included, whose content is kept), whitespace and invisible control/format
characters are removed; every other character is kept unchanged.
"""
import re
import string
import unicodedata
from functools import lru_cache

TAG_OPEN, TAG_CLOSE = "<[({＜［｛", ">])}＞］｝"
TAG_BRACKETS = frozenset(TAG_OPEN + TAG_CLOSE)
_NO_BRACKET = "[^" + re.escape(TAG_OPEN + TAG_CLOSE) + "]*"
TAG_RE = re.compile("|".join(re.escape(o) + _NO_BRACKET + re.escape(c)
                             for o, c in zip(TAG_OPEN, TAG_CLOSE)))
_ASCII_PUNCT = frozenset(string.punctuation)


@lru_cache(maxsize=None)
def _drop_char(ch: str) -> bool:
    """Punctuation (any script, incl. full-width ASCII forms), whitespace, controls."""
    if ch.isspace() or ch in _ASCII_PUNCT:
        return True
    cat = unicodedata.category(ch)
    if cat[0] == "P" or cat in ("Cc", "Cf"):
        return True
    # full-width forms of ASCII symbols (＋ ＝ ～ ｜ ...), category S but punctuation here
    return 0xFF01 <= ord(ch) <= 0xFF5E and unicodedata.normalize("NFKC", ch) in _ASCII_PUNCT


class MalformedTag(ValueError):
    """A transcript still holds a tag bracket after the well-formed tags are removed."""


def normalize_text(text: str) -> str:
    """Remove tags, punctuation and whitespace; keep everything else.

    Tags are spans in < > [ ] ( ) { } (or full-width ＜ ＞ ［ ］ ｛ ｝) with no such bracket
    inside; they go with their content.  Any of these brackets left after that (an unclosed,
    stray or nested tag) raises MalformedTag.  Chinese brackets （）【】《》 are punctuation."""
    rest = TAG_RE.sub("", text)
    left = sorted({ch for ch in rest if ch in TAG_BRACKETS})
    if left:
        raise MalformedTag(f"a malformed tag: stray {' '.join(left)} in {text!r}")
    return "".join(ch for ch in rest if not _drop_char(ch))
