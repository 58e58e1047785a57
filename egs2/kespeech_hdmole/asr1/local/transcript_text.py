"""The text normaliser of the recipe: data preparation (prepare_kespeech.py) applies it to the
transcripts, scoring (score_cer.py) to the references and the hypotheses alike. Tags and
punctuation go, full-width letters and digits become ASCII, the rest is kept; optionally
traditional characters become simplified ones (OpenCC's t2s conversion).

Tags are spans in < > [ ] ( ) { } (or the full-width ＜ ＞ ［ ］ ｛ ｝) with no such bracket
inside, e.g. <SPOKEN_NOISE>, [laughter], (noise), {breath}: they are removed with their content.
A transcript that still holds one of these brackets afterwards (an unclosed tag such as
<SPOKEN_NOISE, a stray or nested bracket) is malformed: normalize_text raises MalformedTag, and
prepare_kespeech.py refuses it with its file:line. Punctuation of any script (the Chinese
brackets （）【】《》 included, whose content is kept), whitespace and invisible control/format
characters are removed; the full-width forms of ASCII letters and digits (Ａ, ｂ, ９) become
ASCII (NFKC); every other character is kept unchanged. A hypothesis is normalised leniently
(strict=False): a stray bracket in what a model wrote is dropped, not an error.
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


@lru_cache(maxsize=None)
def _fold(ch: str) -> str:
    """A full-width ASCII letter or digit as ASCII (NFKC); any other character unchanged."""
    return unicodedata.normalize("NFKC", ch) if 0xFF01 <= ord(ch) <= 0xFF5E else ch


class T2SUnavailable(RuntimeError):
    """Traditional-to-simplified conversion was asked for, and OpenCC is not installed."""


_T2S = None


def to_simplified(text: str) -> str:
    """Traditional characters as simplified ones (OpenCC's t2s conversion)."""
    global _T2S
    if _T2S is None:
        try:
            import opencc
        except ImportError as e:
            raise T2SUnavailable("traditional-to-simplified conversion (--t2s true) needs the Python package 'opencc' "
                               "(tools/install.sh installs it; or `pip install opencc`)") from e
        _T2S = opencc.OpenCC("t2s")
    return _T2S.convert(text)


def normalize_text(text: str, strict: bool = True, t2s: bool = False) -> str:
    """Remove tags, punctuation and whitespace, make full-width letters and digits ASCII; keep
    everything else (with ``t2s``, traditional characters become simplified).

    Tags are spans in < > [ ] ( ) { } (or full-width ＜ ＞ ［ ］ ｛ ｝) with no such bracket
    inside; they go with their content.  Any of these brackets left after that (an unclosed,
    stray or nested tag) raises MalformedTag, or with ``strict=False`` (a model's hypothesis) is
    dropped.  Chinese brackets （）【】《》 are punctuation."""
    rest = TAG_RE.sub("", text)
    left = sorted({ch for ch in rest if ch in TAG_BRACKETS})
    if left and strict:
        raise MalformedTag(f"a malformed tag: stray {' '.join(left)} in {text!r}")
    out = "".join(_fold(ch) for ch in rest if not _drop_char(ch))  # (tag brackets are punctuation)
    return to_simplified(out) if t2s else out
