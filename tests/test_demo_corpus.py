"""Tests of the recipe's demo corpus generator (egs2/kespeech_hdmole/asr1/local).

A tiny corpus is synthesised once per module into a temporary directory.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

LOCAL = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"
SCRIPT = LOCAL / "make_demo_corpus.py"

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng); the demo corpus needs it")

sys.path.insert(0, str(LOCAL))
import demo_accents as acc  # noqa: E402
import demo_text  # noqa: E402
import make_demo_corpus as mdc  # noqa: E402

FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2accent")
SOURCE = ("source_train", "source_dev", "source_test")
TARGET = ("train", "dev") + tuple(f"test_{d}" for d in acc.DOMAINS)
HANZI = re.compile(r"^[\u4e00-\u9fff]+$")


def run_cli(*args, env=None):
    t0 = time.time()
    res = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                         text=True, env=env)
    return res, time.time() - t0


def read_map(path):
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


def snapshot(root):
    """{relative path: (mtime_ns, sha1)} of every file under root."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns,
                                             hashlib.sha1(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    res, seconds = run_cli("--out_dir", root / "data", "--wav_dir", root / "wavs",
                           "--size", "tiny", "--seed", "0", "--nj", "2")
    assert res.returncode == 0, res.stderr
    return {"data": root / "data", "wavs": root / "wavs", "seconds": seconds, "root": root,
            "stderr": res.stderr}


def test_help():
    res, _ = run_cli("--help")
    assert res.returncode == 0
    for word in ("--out_dir", "--wav_dir", "--size", "--nj", "--domains", "tiny", "Jiang-Huai"):
        assert word in res.stdout


def test_tiny_reports_progress_and_each_accents_share_of_changed_syllables(corpus):
    err = corpus["stderr"]
    assert "syllable table" in err and "train:" in err
    shares = dict(re.findall(r"accent (\S+): ([\d.]+)% of syllables changed", err))
    assert list(shares) == list(acc.DOMAINS)  # in the fixed order
    assert float(shares["Mandarin"]) == 0 and all(float(v) > 0 for k, v in shares.items() if k != "Mandarin")


def test_layout(corpus):
    data = corpus["data"]
    assert (data / "accents.txt").read_text().split("\n")[:-1] == list(acc.DOMAINS)
    for name in SOURCE + TARGET:
        for f in FILES + (".done",):
            assert (data / name / f).is_file(), f"{name}/{f} missing"


def test_files_sorted_and_consistent(corpus):
    for name in SOURCE + TARGET:
        d = corpus["data"] / name
        keys = {}
        for f in FILES:
            lines = (d / f).read_text(encoding="utf-8").splitlines()
            first = [ln.split(" ", 1)[0] for ln in lines]
            assert first == sorted(first) and len(set(first)) == len(first), f"{name}/{f}"
            keys[f] = first
        utts = keys["wav.scp"]
        assert utts and keys["text"] == utts and keys["utt2spk"] == utts
        assert keys["utt2accent"] == utts
        utt2spk = read_map(d / "utt2spk")
        assert list(utt2spk.values()) == sorted(utt2spk.values())  # sorts with the utt ids
        for utt, spk in utt2spk.items():
            assert utt.startswith(spk + "-")
        spk2utt = {s: u.split() for s, u in read_map(d / "spk2utt").items()}
        assert sorted(u for us in spk2utt.values() for u in us) == utts
        for spk, us in spk2utt.items():
            assert all(utt2spk[u] == spk for u in us)


def test_wavs(corpus):
    import soundfile as sf

    wavs = corpus["wavs"].resolve()
    n = 0
    for name in SOURCE + TARGET:
        for utt, path in read_map(corpus["data"] / name / "wav.scp").items():
            p = Path(path)
            assert p.is_absolute() and wavs in p.parents and p.name == f"{utt}.wav"
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            x, _ = sf.read(path)
            assert 0.5 < len(x) / 16000 < 10
            assert np.sqrt(np.mean(x ** 2)) > 0.01, f"{path} is (nearly) silent"
            n += 1
    assert n == 60 + 6 + 6 + 9 * (6 + 3 + 3)


def test_transcripts_are_chinese_characters(corpus):
    for name in SOURCE + TARGET:
        for utt, text in read_map(corpus["data"] / name / "text").items():
            assert HANZI.match(text), f"{name} {utt}: {text!r}"
            assert 6 <= len(text) <= 10  # tiny: short sentences


def test_vocabulary_is_restricted(corpus):
    """Every transcript uses only the 700 most frequent characters of the candidate clauses."""
    clauses = mdc.load_clauses(mdc.text_corpus_path(), 6, 10)
    kept = mdc.restrict_vocabulary(clauses, 700)
    allowed = {ch for c in kept for ch in "".join(c)}
    assert len(allowed) <= 700 < len({ch for c in clauses for ch in "".join(c)})
    assert 0 < len(kept) < len(clauses) and mdc.restrict_vocabulary(clauses, 0) == clauses
    for name in SOURCE + TARGET:
        for utt, text in read_map(corpus["data"] / name / "text").items():
            assert set(text) <= allowed, f"{name} {utt}: {set(text) - allowed}"


def _sentence_sets(data):
    sets = {name: set(read_map(data / name / "text").values()) for name in SOURCE}
    for split in ("train", "dev"):
        text, accent = read_map(data / split / "text"), read_map(data / split / "utt2accent")
        for d in acc.DOMAINS:
            sets[f"{d}/{split}"] = {t for u, t in text.items() if accent[u] == d}
    for d in acc.DOMAINS:
        sets[f"{d}/test"] = set(read_map(data / f"test_{d}" / "text").values())
    return sets


def test_sentences_disjoint(corpus):
    sets = _sentence_sets(corpus["data"])
    names = sorted(sets)
    for i, a in enumerate(names):
        assert sets[a], a
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], f"{a} and {b} share sentences"


def test_speakers_disjoint(corpus):
    data = corpus["data"]

    def speakers(*names):
        return {s for n in names for s in read_map(data / n / "utt2spk").values()}

    test_names = [f"test_{d}" for d in acc.DOMAINS]
    groups = [speakers("train"), speakers("dev"), speakers(*test_names),
              speakers("source_train"), speakers("source_dev"), speakers("source_test")]
    for i, a in enumerate(groups):
        assert a
        for b in groups[i + 1:]:
            assert not a & b


def test_domains(corpus):
    data = corpus["data"]
    for split, per_domain in (("train", 6), ("dev", 3)):
        accents = list(read_map(data / split / "utt2accent").values())
        assert sorted(set(accents)) == sorted(acc.DOMAINS)
        assert all(accents.count(d) == per_domain for d in acc.DOMAINS)
    for d in acc.DOMAINS:
        assert set(read_map(data / f"test_{d}" / "utt2accent").values()) == {d}
    for name in SOURCE:
        assert set(read_map(data / name / "utt2accent").values()) == {"Mandarin"}


def test_deterministic(corpus, tmp_path):
    """Same seed, a domain subset and --nj 1: the same texts and the same audio."""
    res, _ = run_cli("--out_dir", tmp_path / "data", "--wav_dir", tmp_path / "wavs",
                     "--size", "tiny", "--seed", "0", "--nj", "1",
                     "--domains", "Southwestern", "Mandarin")
    assert res.returncode == 0, res.stderr
    a, b = corpus["data"], tmp_path / "data"
    assert (b / "accents.txt").read_text() == "Mandarin\nSouthwestern\n"
    for name in SOURCE + ("test_Southwestern", "test_Mandarin"):
        for f in ("text", "utt2spk", "spk2utt", "utt2accent"):
            assert (a / name / f).read_bytes() == (b / name / f).read_bytes(), f"{name}/{f}"
    keep = {"MAN", "SWE"}
    for split in ("train", "dev"):
        lines = (a / split / "text").read_text(encoding="utf-8").splitlines()
        assert [ln for ln in lines if ln[:3] in keep] == \
            (b / split / "text").read_text(encoding="utf-8").splitlines()
    assert not (b / "test_Beijing").exists()
    for name in ("source_train", "test_Southwestern"):
        utt = sorted(read_map(a / name / "wav.scp"))[0]
        wa, wb = read_map(a / name / "wav.scp")[utt], read_map(b / name / "wav.scp")[utt]
        assert Path(wa).read_bytes() == Path(wb).read_bytes()


def test_accent_changes_the_sound_not_the_text(corpus):
    cache = json.loads((corpus["wavs"] / ".espeak" / "syllable_table.json").read_text("utf-8"))
    table = {k: tuple(v) for k, v in cache["table"].items()}
    import pypinyin

    texts = list(read_map(corpus["data"] / "train" / "text").values())
    clauses = {"".join(c): c for c in mdc.load_clauses(mdc.text_corpus_path(), 6, 10)}
    sents = [demo_text.sentence_pinyin(clauses[t], pypinyin.lazy_pinyin, pypinyin.Style.TONE3, table)
             for t in texts]
    assert all(sents)
    readings = {"".join(v) for v in table.values()}
    rhotic = {v[0] + v[1] + table["er"][1] for v in table.values()}  # erhua: er's vowel for the coda
    for d in acc.DOMAINS[1:]:
        differ = 0
        for i, s in enumerate(sents):
            std, _ = acc.render(s, "Mandarin", table, mdc.seeded_rng(i))
            acc_, _ = acc.render(s, d, table, mdc.seeded_rng(i))
            differ += std != acc_
            # only syllables espeak-ng itself produced, with a stress mark and a contour
            for syl in acc_[2:-2].split():
                m = re.fullmatch(r"([^'\d]*)'?([^'\d]+)(214|11|21|22|33|35|44|51|53|55)(\D*)", syl)
                assert m and ("".join(m.group(1, 2, 4)) in readings or "".join(m.group(1, 2, 4)) in rhotic), syl
        assert differ >= len(sents) // 2, d
    # and it sounds different: Southwestern vs standard, same sentence and voice
    s = sents[0]
    std = mdc.synthesize(acc.render(s, "Mandarin", table, mdc.seeded_rng(0))[0], "", 175,
                         exe=shutil.which("espeak-ng"))
    swe = mdc.synthesize(acc.render(s, "Southwestern", table, mdc.seeded_rng(0))[0], "", 175,
                         exe=shutil.which("espeak-ng"))
    assert len(std) > 8000 and len(swe) > 8000
    assert len(std) != len(swe) or not np.array_equal(std, swe)


def test_rules():
    assert acc.split_syllable("zhuang") == ("zh", "uang")
    assert acc.split_syllable("ai") == ("", "ai")
    assert acc.N_TO_L("n", "v") == "lv"
    assert acc.R_TO_Y("r", "en") == "yin"
    assert acc.ZH_TO_Z("sh", "i") == "si"
    assert acc.NG_TO_N_ALL("y", "ing") == "yin" and acc.NG_TO_N_ALL("w", "ang") == "wan"
    assert acc.E_TO_UO("d", "e") == "duo" and acc.E_TO_IE("d", "e") == "die" and acc.E_TO_EI("d", "e") == "dei"
    assert acc.N_TO_NG("d", "un") == "dong"
    assert acc.ZERO_TO_NG("", "an") == "ngan" and acc.ZERO_TO_NG("", "er") is None
    assert acc.W_TO_V("w", "ei") == "vei" and acc.W_TO_V("w", "u") is None
    # the third tables' changes of the most frequent syllables
    assert acc.I_TO_IEI_JQX("j", "i") == "jei" and acc.ZHI_TO_ZHEI("sh", "i") == "shei"
    assert acc.ZHI_TO_ZI("zh", "i") == "zi" and acc.U_TO_O_LABIAL("b", "u") == "bo"
    assert acc.ZH_TO_J("zh", "ong") == "jiong" and acc.ZH_TO_J("zh", "i") is None  # zhi: ZHI_TO_JI
    assert acc.ING_TO_ENG("j", "ing") == "jeng" and acc.ING_TO_ENG("y", "ing") is None
    assert acc.ING_TO_IONG("l", "ing") == "liong" and acc.UI_TO_EI("d", "ui") == "dei"
    assert acc.UO_TO_O("g", "uo") == "go" and acc.DE_TO_DI("d", "e") == "di"
    assert acc.NG_TO_N_EI("zh", "eng") == "zhen" and acc.NG_TO_N_EI("j", "ing") == "jin"
    assert acc.EI_TO_AI("b", "ei") == "bai" and acc.AI_TO_EI("z", "ai") == "zei"
    # every accent but Mandarin changes one of the three most frequent syllables (shi, de, ji)
    for name, accent in acc.ACCENTS.items():
        changes_one = any(r.fn(*acc.split_syllable(syl)) for syl in ("shi", "de", "ji") for r in accent.rules)
        assert changes_one == (name != "Mandarin"), name
    table = {"ni": ("n", "i", ""), "li": ("l", "i", ""), "hao": ("X", "Au", "")}
    rng = np.random.default_rng(0)
    phon, changed = acc.render([[("ni", 3), ("hao", 3)]], "Mandarin", table, rng)
    assert phon == "[[n'i35 X'Au214]]" and changed == 0  # tone-3 sandhi
    phon, changed = acc.render([[("ni", 3), ("hao", 3)]], "Jiang-Huai", table,
                               np.random.default_rng(0))
    assert phon.endswith("X'Au22]]")


def test_erhua_puts_an_unstressed_er_in_place_of_the_coda(monkeypatch):
    table = {"yi": ("j", "i", ""), "wan": ("w", "A", "n"), "er": ("", "@r", "")}
    rhotic = dataclasses.replace(acc.ACCENTS["Beijing"], erhua=1.0, extra_neutral=0.0)
    monkeypatch.setitem(acc.ACCENTS, "Beijing", rhotic)
    phon, changed = acc.render([[("yi", 1), ("wan", 4)]], "Beijing", table, np.random.default_rng(0))
    assert phon == "[[j'i55 w'A51@r]]" and changed == 1  # only the word's last syllable
    # espeak-ng reads the er vowel after the contour as a neutral-tone syllable of its own
    if shutil.which("espeak-ng"):
        parsed = subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-q", "-x", phon],
                                capture_output=True, text=True).stdout.split()
        assert parsed[-1].startswith("w'A51@r11"), parsed
    phon, changed = acc.render([[("yi", 1), ("wan", 4)]], "Mandarin", table, np.random.default_rng(0))
    assert phon == "[[j'i55 w'A51n]]" and changed == 0


def test_accent_rules_are_part_of_the_corpus_settings(corpus, monkeypatch):
    """A corpus made with other accent rules is refused, never reused: the rules' fingerprint
    is in the settings record, and it changes with any rule's probability or output."""
    meta = json.loads((corpus["data"] / ".demo_corpus.json").read_text("utf-8"))
    assert meta["accent_rules"] == acc.fingerprint()
    before = acc.fingerprint()
    lan_yin = acc.ACCENTS["Lan-Yin"]
    monkeypatch.setitem(acc.ACCENTS, "Lan-Yin", dataclasses.replace(
        lan_yin, rules=(dataclasses.replace(lan_yin.rules[0], prob=0.5),) + lan_yin.rules[1:]))
    assert acc.fingerprint() != before
    monkeypatch.setitem(acc.ACCENTS, "Lan-Yin", dataclasses.replace(
        lan_yin, rules=(dataclasses.replace(lan_yin.rules[0], fn=acc.NG_TO_N_ALL),) + lan_yin.rules[1:]))
    assert acc.fingerprint() != before


def test_rerun_skips_and_changes_nothing(corpus):
    before = snapshot(corpus["root"])
    res, _ = run_cli("--out_dir", corpus["data"], "--wav_dir", corpus["wavs"],
                     "--size", "tiny", "--seed", "0", "--nj", "2")
    assert res.returncode == 0, res.stderr
    assert "nothing to do" in res.stdout
    assert snapshot(corpus["root"]) == before


def test_conflicting_out_dir_is_refused(corpus, tmp_path):
    before = snapshot(corpus["data"])
    res, _ = run_cli("--out_dir", corpus["data"], "--wav_dir", corpus["wavs"],
                     "--size", "tiny", "--seed", "1")
    assert res.returncode != 0
    assert "other settings" in res.stderr and "seed" in res.stderr
    assert snapshot(corpus["data"]) == before
    # a user's own data (no settings file) is not overwritten either
    mine = tmp_path / "data" / "train"
    mine.mkdir(parents=True)
    (mine / "text").write_text("u1 mine\n")
    res, _ = run_cli("--out_dir", tmp_path / "data", "--wav_dir", tmp_path / "wavs",
                     "--size", "tiny")
    assert res.returncode != 0
    assert "not made by make_demo_corpus.py" in res.stderr and "train" in res.stderr
    assert (mine / "text").read_text() == "u1 mine\n"
    assert not (tmp_path / "wavs" / "train").exists()


def test_missing_espeak_is_explained(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no espeak-ng on this PATH
    res, _ = run_cli("--out_dir", tmp_path / "data", "--wav_dir", tmp_path / "wavs",
                     "--size", "tiny", env=env)
    assert res.returncode != 0
    assert "espeak-ng" in res.stderr and "apt-get install espeak-ng" in res.stderr
    assert not (tmp_path / "data").exists()


def test_one_channel_for_every_set_but_the_clean_source_test(tmp_path):
    """source_train/dev and every target set draw their channel from draw_channel; source_test is
    clean (it measures forgetting of the clean source domain)."""
    import demo_channel

    table = {"ma": ("m", "A", "")}
    sents = [("妈", [[("ma", 1)]])] * 40
    sentences = {"source_train": sents, "source_test": sents, "Mandarin/test": sents, "Mandarin/train": sents,
                 "Southwestern/train": sents}
    settings = {"seed": 0, "counts": mdc.SIZES["tiny"], "wav_dir": str(tmp_path)}
    voices = {}
    plan = {n: mdc.plan_set(n, sentences, ["Mandarin", "Southwestern"], settings, table, voices)
            for n in ("source_train", "source_test", "test_Mandarin", "train")}
    assert all(j["channel"] is None for j in plan["source_test"])
    for name in ("source_train", "test_Mandarin", "train"):
        channels = [j["channel"] for j in plan[name]]
        assert all(isinstance(c, dict) and set(c) == {"rt60", "drr_db", "phone", "snr_db", "noise"} for c in channels)
    draws = [demo_channel.draw_channel(mdc.seeded_rng(0, k)) for k in range(4000)]
    assert abs(np.mean([d["phone"] for d in draws]) - 0.5) < 0.03
    assert abs(np.mean([d["snr_db"] is not None for d in draws]) - 0.8) < 0.03
    assert abs(np.mean([d["rt60"] is not None for d in draws]) - 0.5) < 0.03
    assert min(d["snr_db"] for d in draws if d["snr_db"] is not None) >= 15


def test_speaker_voices_are_spread_over_small_voice_directories(tmp_path):
    """espeak-ng stops reading a voices directory at ~350 entries: the default corpus's 570
    speakers live in one directory per domain code."""
    counts = mdc.SIZES["default"]
    assert sum(counts["speakers"]) >= 30 and counts["speakers"][0] >= 30  # >= 30 training speakers a domain
    per_home = {}
    for code in list(acc.CODES.values()) + [acc.SOURCE_CODE]:
        n = sum(counts["source_speakers"] if code == acc.SOURCE_CODE else counts["speakers"])
        for k in range(n):
            home = mdc.voice_home(tmp_path, f"{code}-tr-s{k:03d}")
            per_home[home] = per_home.get(home, 0) + 1
    assert sum(per_home.values()) > 350 and max(per_home.values()) < 200
