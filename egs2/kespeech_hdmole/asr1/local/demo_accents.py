"""Accent rules of the offline demo corpus (see make_demo_corpus.py).

The nine domains carry the KeSpeech names.  Each accent is a tone table plus a
few sound changes written as rewrites of toneless pinyin syllables; each change
fires per syllable with its own probability, so mergers stay partial.  These
tables are design parameters chosen to give a learnable, speaker-sized shift
per domain; they are not dialectology.

Why so many changes of such frequent sounds: the demo's utterances are about ten syllables
long, and espeak-ng's tone contours are weak (its level tones 55, 44, 22 and 21 come out almost
alike), so an accent must be audible in the segments for an accent-ID head to tell it from the
others.  With a few rare changes per accent (the first version of these tables), 40-85% of an
accent's utterances had no changed syllable at all and accent ID stayed at 34% (chance 11%).
Every accent but Mandarin therefore changes frequent sounds (the finals e, i, u, ou, ong, -n/-ng,
the initials y, j/q/x, zh/ch/sh) in a way no other accent does; Beijing rhotacises (erhua) the
last syllable of words: its coda gives way to the vowel of "er", which espeak-ng reads as an
unstressed neutral-tone syllable of its own (``w'A51@r`` -> ``w'A51 @r11``), as in a careful
reading of 玩儿 rather than a fused rhotic final.  make_demo_corpus.py logs, per domain, the share of changed syllables
and of utterances without a change.

The third version (these tables) adds a change of the most frequent syllables to every accent but
Mandarin (shi, de, ji, zhi, bu, zhong, ...; e.g. Jiang-Huai ji -> jei, Ji-Lu shi -> shei,
Northeastern bu -> bo) and raises the weaker probabilities. Stage 1's log of the default corpus:
22-29% of an accent's syllables change (Beijing 42% with its erhua), against 17-25% before, and
0-12% of its utterances have no change, against 5-19%.
Measured without audio, on the rendered syllables of the default corpus (a logistic regression
on each utterance's bag of toneless syllables, trained on train, scored on test): 79% accent ID,
against 69% for the second version; with each syllable's tone contour in four classes (level,
rising, dipping, falling) 90%, against 86%.  The audio head of the second version reached 68%.

A rewrite only takes effect if espeak-ng could read the resulting syllable
(the syllable table is read back from espeak-ng itself, see
``make_demo_corpus.build_syllable_table``); otherwise the syllable is kept.
The one change that pinyin cannot spell, a velar-nasal initial (``ng-``), is
built from the phoneme ``N`` that espeak-ng uses for the coda of ``ang``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from kespeech_common import LABELS

# KeSpeech's nine labels in their fixed order: accents.txt, --domains and the sentence allocation use it.
DOMAINS: Tuple[str, ...] = LABELS
# Three-letter codes used as the first part of speaker and utterance ids.
CODES: Dict[str, str] = {
    "Mandarin": "MAN",
    "Beijing": "BEI",
    "Jiang-Huai": "JHU",
    "Jiao-Liao": "JLI",
    "Ji-Lu": "JLU",
    "Lan-Yin": "LYI",
    "Northeastern": "NEA",
    "Southwestern": "SWE",
    "Zhongyuan": "ZHY",
}
SOURCE_CODE = "SRC"

# Tone contours espeak-ng's cmn phoneme table understands; others are mis-parsed.
VALID_CONTOURS = frozenset({"11", "21", "22", "33", "35", "44", "51", "53", "55", "214"})
NEUTRAL = "11"
STRESS = "'"  # espeak-ng's primary-stress mark, written before the vowel

# "ng" is no Mandarin initial, but the zero-initial -> ng- change creates it.
INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "ng", "n", "l", "g", "k", "h",
            "j", "q", "x", "r", "z", "c", "s", "y", "w")


def split_syllable(syl: str) -> Tuple[str, str]:
    """Toneless pinyin (``v`` for u-umlaut) -> (initial, final); initial '' if none."""
    if syl in ("m", "n", "ng", "hm", "hng"):  # interjections: no initial/final structure
        return "", syl
    for ini in INITIALS:
        if syl.startswith(ini) and len(syl) > len(ini):
            return ini, syl[len(ini):]
    return "", syl


# --------------------------------------------------------------------------
# Sound changes: functions (initial, final) -> new toneless syllable or None.
# --------------------------------------------------------------------------
def _initials(mapping: Dict[str, str]) -> Callable[[str, str], Optional[str]]:
    return lambda ini, fin: mapping[ini] + fin if ini in mapping else None


def _syllables(mapping: Dict[str, str]) -> Callable[[str, str], Optional[str]]:
    return lambda ini, fin: mapping.get(ini + fin)


def _zero_initial(prefix: str) -> Callable[[str, str], Optional[str]]:
    # zero-initial syllables spelled with a/o/e (not er): an -> nan / ngan
    return lambda ini, fin: (prefix + fin
                             if ini == "" and fin[:1] in ("a", "o", "e") and fin != "er" else None)


def _finals(mapping: Dict[str, str],
            skip_initials=("y", "w")) -> Callable[[str, str], Optional[str]]:
    return lambda ini, fin: (ini + mapping[fin]
                             if fin in mapping and ini not in skip_initials else None)


ZH_TO_Z = _initials({"zh": "z", "ch": "c", "sh": "s"})
Z_TO_ZH = _initials({"z": "zh", "c": "ch", "s": "sh"})
N_TO_L = _initials({"n": "l"})
R_TO_Z = _initials({"r": "z"})
R_TO_Y = _syllables({"ren": "yin", "reng": "ying", "ri": "yi", "rou": "you", "ru": "yu",
                     "ruan": "yuan", "run": "yun", "ruo": "yue", "rang": "yang",
                     "ran": "yan", "rao": "yao", "re": "ye", "rong": "yong"})
RU_TO_LU = lambda ini, fin: "l" + fin if ini == "r" and fin.startswith("u") else None  # noqa: E731
W_TO_V = lambda ini, fin: (  # noqa: E731
    "v" + fin if ini == "w" and fin in ("a", "ai", "an", "ang", "ei", "en", "eng") else None)
ZERO_TO_N = _zero_initial("n")
ZERO_TO_NG = _zero_initial("ng")  # realised as phoneme N + the syllable (see module doc)
AI_TO_E = _finals({"ai": "ê"})
AO_TO_O = _finals({"ao": "o"})
N_TO_NG = _finals({"en": "eng", "in": "ing", "an": "ang", "ian": "iang", "uan": "uang",
                   "un": "ong"}, skip_initials=())
SHU_TO_FU = _syllables({"shu": "fu", "shui": "fei"})
GE_TO_GO = _syllables({"ge": "go", "ke": "ko", "he": "ho"})
NG_TO_N_ALL = _finals({"ing": "in", "eng": "en", "ang": "an", "iang": "ian", "uang": "uan"},
                      skip_initials=())
ZHI_TO_JI = _syllables({"zhi": "ji", "chi": "qi", "shi": "xi"})
E_TO_IE = _syllables({f"{i}e": f"{i}ie" for i in ("d", "t", "l", "n", "m", "g", "k", "h")})
E_TO_UO = _syllables({f"{i}e": f"{i}uo" for i in ("d", "t", "l", "n", "g", "k", "h", "z", "c", "s",
                                                   "zh", "ch", "sh", "r")})
I_TO_EI = _syllables({f"{i}i": f"{i}ei" for i in ("b", "p", "m", "d", "t", "n", "l")})
U_TO_OU = _syllables({f"{i}u": f"{i}ou" for i in ("d", "t", "n", "l", "z", "c", "s")})
ONG_TO_ENG = _finals({"ong": "eng"})
AN_TO_A = _finals({"an": "a", "ian": "ie", "uan": "ua"})
ONG_TO_UN = _finals({"ong": "un"})
E_TO_EI = _syllables({f"{i}e": f"{i}ei" for i in ("d", "t", "l", "n", "z", "c", "s", "zh", "ch", "sh",
                                                   "r")})
Y_TO_R = _initials({"y": "r"})
J_TO_Z = _initials({"j": "z", "q": "c", "x": "s"})
OU_TO_U = _finals({"ou": "u"})
UO_TO_E = _syllables({f"{i}uo": f"{i}e" for i in ("d", "t", "l", "n", "g", "k", "h", "z", "c", "s",
                                                   "zh", "ch", "sh", "r")})
ANG_TO_ONG = _finals({"ang": "ong"})
I_TO_V = _syllables({"ji": "ju", "qi": "qu", "xi": "xu"})
HU_TO_F = _syllables({"hu": "fu", "hua": "fa", "hui": "fei", "huan": "fan", "hun": "fen",
                      "huang": "fang", "huo": "fo", "huai": "fai"})

I_TO_IEI_JQX = _syllables({"ji": "jei", "qi": "qei", "xi": "xei"})
ZHI_TO_ZI = _syllables({"zhi": "zi", "chi": "ci", "shi": "si"})
ZHI_TO_ZHEI = _syllables({"zhi": "zhei", "chi": "chei", "shi": "shei"})
U_TO_O_LABIAL = _syllables({"bu": "bo", "pu": "po", "mu": "mo", "fu": "fo"})
ING_TO_IONG = _syllables({f"{i}ing": f"{i}iong" for i in ("b", "p", "m", "d", "t", "n", "l", "j", "q", "x")})
NG_TO_N_EI = _finals({"eng": "en", "ing": "in"}, skip_initials=())
EI_TO_AI = _syllables({f"{i}ei": f"{i}ai" for i in ("b", "p", "m", "f", "d", "n", "l", "g", "h", "z", "sh")})
AI_TO_EI = _syllables({f"{i}ai": f"{i}ei" for i in ("b", "p", "m", "d", "t", "n", "l", "g", "k", "h", "z",
                                                   "c", "s", "zh", "ch", "sh")})
DE_TO_DI = _syllables({"de": "di"})
UO_TO_O = _syllables({f"{i}uo": f"{i}o" for i in ("d", "t", "n", "l", "g", "k", "h", "z", "c", "s",
                                                  "zh", "ch", "sh", "r")})
ZH_TO_J = _syllables({"zhang": "jiang", "chang": "qiang", "shang": "xiang", "zhong": "jiong",
                      "chong": "qiong", "zhe": "jie", "che": "qie", "she": "xie", "zhu": "ju",
                      "chu": "qu", "shu": "xu", "zheng": "jing", "cheng": "qing", "sheng": "xing",
                      "zhen": "jin", "chen": "qin", "shen": "xin", "zhou": "jiu", "shou": "xiu",
                      "zhan": "jian", "chan": "qian", "shan": "xian"})
ING_TO_ENG = _finals({"ing": "eng"}, skip_initials=("y", "w"))
UI_TO_EI = _syllables({f"{i}ui": f"{i}ei" for i in ("d", "t", "g", "k", "h", "z", "c", "s", "zh", "ch",
                                                   "sh", "r")})


@dataclass(frozen=True)
class Rule:
    name: str
    prob: float
    part: str  # "initial", "final" or "both": a part changed once is not changed again
    fn: Callable[[str, str], Optional[str]]


@dataclass(frozen=True)
class Accent:
    tones: Tuple[str, str, str, str]  # contours of tones 1-4
    rules: Tuple[Rule, ...] = ()
    sandhi: bool = False  # standard tone-3 sandhi and neutral tone after tone 3
    extra_neutral: float = 0.0  # chance that a non-first syllable of a word goes neutral
    rate: float = 1.0  # speaking-rate factor
    erhua: float = 0.0  # chance that a word's last syllable is rhotacised (coda -> a neutral er)


# domain: tone contours of T1-T4, then its sound changes with their probabilities (see the
# module doc for why every accent changes frequent sounds, each in its own way).
ACCENTS: Dict[str, Accent] = {
    "Mandarin": Accent(("55", "35", "214", "51"), sandhi=True),
    "Beijing": Accent(("55", "35", "214", "51"), sandhi=True, extra_neutral=0.4, rate=1.15,
                      erhua=0.7, rules=(
                          Rule("w->v before a/ai/an/ang/ei/en/eng", 0.9, "initial", W_TO_V),
                          Rule("de->di", 0.8, "both", DE_TO_DI))),
    "Jiang-Huai": Accent(("21", "35", "22", "44"), rules=(
        Rule("n->l", 0.95, "initial", N_TO_L),
        Rule("-ng->-n (ing/eng/ang/iang/uang)", 0.9, "final", NG_TO_N_ALL),
        Rule("an/ian/uan->a/ie/ua", 0.8, "final", AN_TO_A),
        Rule("ong->un", 0.85, "final", ONG_TO_UN),
        Rule("uo->o", 0.9, "both", UO_TO_O),
        Rule("ji/qi/xi->jei/qei/xei", 0.85, "both", I_TO_IEI_JQX))),
    "Jiao-Liao": Accent(("21", "55", "214", "55"), rules=(
        Rule("r->y", 0.9, "both", R_TO_Y),
        Rule("zhi/chi/shi->ji/qi/xi", 0.95, "both", ZHI_TO_JI),
        Rule("zh/ch/sh->j/q/x before other finals", 0.8, "both", ZH_TO_J),
        Rule("e->ie after d/t/l/n/m/g/k/h", 0.9, "both", E_TO_IE),
        Rule("uo->e after d/t/l/n/g/k/h/z/c/s/zh/ch/sh/r", 0.8, "both", UO_TO_E),
        Rule("ai->ei", 0.8, "both", AI_TO_EI))),
    "Ji-Lu": Accent(("214", "53", "55", "21"), rules=(
        Rule("zero initial->ng", 0.9, "initial", ZERO_TO_NG),
        Rule("ru->lu", 0.7, "initial", RU_TO_LU),
        Rule("ong->eng", 0.85, "final", ONG_TO_ENG),
        Rule("ing->eng", 0.85, "final", ING_TO_ENG),
        Rule("du/tu/nu/lu/zu/cu/su->dou/tou/...", 0.9, "both", U_TO_OU),
        Rule("y->r", 0.9, "initial", Y_TO_R),
        Rule("ai->E", 0.8, "final", AI_TO_E),
        Rule("ao->o", 0.8, "final", AO_TO_O),
        Rule("zhi/chi/shi->zhei/chei/shei", 0.8, "both", ZHI_TO_ZHEI))),
    "Lan-Yin": Accent(("21", "53", "44", "35"), rules=(
        Rule("-n->-ng, un->ong", 0.9, "final", N_TO_NG),
        Rule("ou->u", 0.85, "final", OU_TO_U),
        Rule("e->ei after d/t/l/n/z/c/s/zh/ch/sh/r", 0.9, "both", E_TO_EI),
        Rule("n->l", 0.8, "initial", N_TO_L),
        Rule("zhi/chi/shi->zi/ci/si", 0.8, "both", ZHI_TO_ZI))),
    "Northeastern": Accent(("33", "35", "214", "53"), rules=(
        Rule("r->y", 0.9, "both", R_TO_Y),
        Rule("z/c/s->zh/ch/sh", 0.8, "initial", Z_TO_ZH),
        Rule("bi/pi/mi/di/ti/ni/li->bei/pei/...", 0.9, "both", I_TO_EI),
        Rule("j/q/x->z/c/s", 0.8, "initial", J_TO_Z),
        Rule("zero initial->n", 0.8, "initial", ZERO_TO_N),
        Rule("bu/pu/mu/fu->bo/po/mo/fo", 0.85, "both", U_TO_O_LABIAL))),
    "Southwestern": Accent(("55", "21", "53", "214"), rules=(
        Rule("zh/ch/sh->z/c/s", 0.95, "initial", ZH_TO_Z),
        Rule("n->l", 0.9, "initial", N_TO_L),
        Rule("hu->f", 0.8, "both", HU_TO_F),
        Rule("r->z", 0.8, "initial", R_TO_Z),
        Rule("ge/ke/he->go/ko/ho", 0.9, "both", GE_TO_GO),
        Rule("-eng/-ing->-en/-in", 0.85, "final", NG_TO_N_EI))),
    "Zhongyuan": Accent(("35", "51", "53", "214"), rules=(
        Rule("zero initial->ng", 0.9, "initial", ZERO_TO_NG),
        Rule("shu/shui->fu/fei", 0.8, "both", SHU_TO_FU),
        Rule("e->uo after d/t/l/n/g/k/h/z/c/s/zh/ch/sh/r", 0.95, "both", E_TO_UO),
        Rule("ji/qi/xi->ju/qu/xu", 0.9, "both", I_TO_V),
        Rule("ang->ong", 0.85, "final", ANG_TO_ONG),
        Rule("dui/gui/hui...->dei/gei/hei...", 0.8, "both", UI_TO_EI),
        Rule("ai->E", 0.5, "final", AI_TO_E),
        Rule("-ing->-iong after b/p/m/d/t/n/l/j/q/x", 0.8, "both", ING_TO_IONG),
        Rule("ei->ai", 0.8, "both", EI_TO_AI))),
}
assert tuple(ACCENTS) == DOMAINS  # noqa: S101
for _a in ACCENTS.values():
    assert set(_a.tones) <= VALID_CONTOURS  # noqa: S101


def rule_targets(syllables: Sequence[str]) -> List[str]:
    """Syllables the rules can reach from ``syllables`` (closure), minus the ``ng-`` ones."""
    known = set(syllables)
    todo = list(known)
    while todo:
        new_found = []
        for syl in todo:
            for accent in ACCENTS.values():
                for rule in accent.rules:
                    new = rule.fn(*split_syllable(syl))
                    if new and new not in known:
                        known.add(new)
                        new_found.append(new)
        todo = new_found
    return sorted(s for s in known - set(syllables) if not s.startswith("ng"))


_FINALS = ("a", "ai", "an", "ang", "ao", "e", "ei", "en", "eng", "er", "i", "ia", "ian", "iang",
           "iao", "ie", "in", "ing", "iong", "iu", "o", "ong", "ou", "u", "ua", "uai", "uan",
           "uang", "ue", "ui", "un", "uo", "v", "ve")


def fingerprint() -> str:
    """A hash of what the accents do (tones, settings, each rule's probability and its output on
    every initial+final), so that a corpus made with other accent rules is never reused."""
    import hashlib
    probe = [i + f for i in ("",) + INITIALS for f in _FINALS] + ["m", "n", "ng", "hm", "hng"]
    desc = []
    for name, a in ACCENTS.items():
        desc.append((name, a.tones, a.sandhi, a.extra_neutral, a.rate, a.erhua))
        for r in a.rules:
            desc.append((r.prob, r.part, [r.fn(*split_syllable(s)) for s in probe]))  # not the name
    return hashlib.sha256(repr(desc).encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------
# Rendering: words of (syllable, tone) -> espeak-ng phoneme input.
# --------------------------------------------------------------------------
Table = Dict[str, Tuple[str, str, str]]  # syllable -> (onset, rhyme, coda) as espeak writes them


def apply_rules(syl: str, accent: Accent, table: Table, rng) -> str:
    """Apply the accent's sound changes to one toneless syllable."""
    changed = set()
    for rule in accent.rules:
        draw = rng.random()  # drawn for every rule, whether or not an earlier one fired
        parts = {"initial", "final"} if rule.part == "both" else {rule.part}
        if draw >= rule.prob or parts & changed:
            continue
        new = rule.fn(*split_syllable(syl))
        if new and new != syl and new in table:
            syl = new
            changed |= parts
    return syl


def contours(tones: Sequence[int], accent: Accent) -> List[Tuple[str, bool]]:
    """Tone numbers (1-5, 5 = neutral) of one utterance -> (contour, stressed) pairs."""
    out = []
    for i, t in enumerate(tones):
        nxt = tones[i + 1] if i + 1 < len(tones) else None
        prev = tones[i - 1] if i > 0 else None
        if t == 5:  # neutral tones are unstressed, as espeak-ng writes them
            out.append(("44" if accent.sandhi and prev == 3 else NEUTRAL, False))
        elif accent.sandhi and t == 3 and nxt is not None:
            out.append(("35" if nxt == 3 else "21", True))  # 3-3 sandhi; half third otherwise
        else:
            out.append((accent.tones[t - 1], True))
    return out


def render(words: Sequence[Sequence[Tuple[str, int]]], domain: str, table: Table, rng):
    """Words of (toneless syllable, tone) -> (espeak phoneme input, number of changed syllables).

    Only the sound changes: the transcript stays the original characters.
    """
    accent = ACCENTS[domain]
    orig: List[str] = []
    syls: List[str] = []
    tones: List[int] = []
    rhotic: List[bool] = []
    for word in words:
        for k, (syl, tone) in enumerate(word):
            if k > 0 and tone != 5 and rng.random() < accent.extra_neutral:
                tone = 5
            orig.append(syl)
            syls.append(apply_rules(syl, accent, table, rng))
            tones.append(tone)
            rhotic.append(accent.erhua > 0 and k == len(word) - 1 and "er" not in syl
                          and rng.random() < accent.erhua)
    er = table["er"][1] if any(rhotic) else ""
    pieces = []
    for syl, (contour, stressed), rho in zip(syls, contours(tones, accent), rhotic):
        onset, rhyme, coda = table[syl]
        mark = STRESS if stressed else ""
        # erhua: the vowel of "er" replaces the coda; espeak-ng reads it as an unstressed syllable
        pieces.append(f"{onset}{mark}{rhyme}{contour}{er if rho else coda}")
    n_changed = sum(a != b or rho for a, b, rho in zip(orig, syls, rhotic))
    return "[[" + " ".join(pieces) + "]]", n_changed
