"""The demo corpus's voice: espeak-ng (cmn-latn-pinyin) found and checked, its syllable table
read back from it, per-speaker voice variants, and synthesis of phoneme input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_accents as acc  # noqa: E402
from demo_common import CorpusError, log, seeded_rng  # noqa: E402


VOICE = "cmn-latn-pinyin"

ESPEAK_FS = 22050


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


def voice_home(root: Path, spk: str) -> Path:
    """The --path directory of a speaker's voice: one per domain code (SRC, MAN, ...), since
    espeak-ng stops reading a voices directory at about 350 entries (its languages included)."""
    return root / "voices" / spk.split("-")[0]


def speaker_voice(spk: str, seed: int) -> Tuple[str, float]:
    """-> (voice variant file text, speaking rate in words per minute).

    The pitch span sets how far espeak-ng's tone contours move: with a span under ~100 Hz the
    tones (and so the demo's accents, which differ mostly in tones) move log F0 by only about
    +-0.1; the spans here roughly double that."""
    rng = seeded_rng(seed, spk, "voice")
    female = rng.random() < 0.5
    base = rng.uniform(150, 205) if female else rng.uniform(78, 115)
    span = rng.uniform(130, 190) if female else rng.uniform(90, 140)
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
    root = private or _PRIVATE
    if root:
        cmd.append(f"--path={voice_home(Path(root), variant) if variant else root}")
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
