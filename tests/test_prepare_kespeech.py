"""Tests of the KeSpeech data preparation (egs2/kespeech_hdmole/asr1/local/prepare_kespeech.py).

A KeSpeech-shaped corpus (real layout, relative wav paths, tagged and punctuated
transcripts, unsorted files, short real WAV files) is built in a temporary directory.
"""

import contextlib
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

LOCAL = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"
SCRIPT = LOCAL / "prepare_kespeech.py"
sys.path.insert(0, str(LOCAL))
import prepare_kespeech as pk  # noqa: E402

LABELS = ["Mandarin", "Beijing", "Jiang-Huai", "Jiao-Liao", "Ji-Lu", "Lan-Yin",
          "Northeastern", "Southwestern", "Zhongyuan"]
SUBSETS = ["train_phase1", "train_phase2", "dev_phase1", "dev_phase2", "test"]
CODES = {"train_phase1": "t1", "train_phase2": "t2", "dev_phase1": "d1", "dev_phase2": "d2",
         "test": "te"}
FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2accent")
OUT_DIRS = ["train", "dev", "source_test"] + [f"test_{lab}" for lab in LABELS]
SENTENCES = ["今天天气很好", "我们一起去北京", "你好世界和平", "春天的花开了", "请把门关上吧",
             "晚上吃饺子吗", "火车马上到站", "老师讲得很清楚", "这个苹果很甜"]
PUNCT = set("，。！？、；：“”‘’《》（）【】…—,.!?;:'\"()[]<>")
NO_SOURCE_MSG = ("no source-domain dir configured: KeSpeech's own Mandarin test utterances "
                 "serve as the source test set")


# --------------------------------------------------------------------------
# Building a KeSpeech-shaped corpus
# --------------------------------------------------------------------------
def write_wav(path: Path, seed: int, frames: int = 4800, channels: int = 1) -> None:
    """0.3 s by default: room for 15 transcript characters (one per 20 ms)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = (0.1 * rng.standard_normal((frames, channels))).astype(np.float32)
    soundfile.write(str(path), x if channels > 1 else x[:, 0], 16000, subtype="PCM_16")


def make_corpus(root: Path) -> SimpleNamespace:
    """Two utterances per label and subset (+ specials in train_phase1); unsorted files."""
    rng = np.random.default_rng(0)
    subsets = {}
    seed = 0
    for s_i, subset in enumerate(SUBSETS):
        phase = "phase2" if subset.endswith("2") else "phase1"
        entries = []
        for li, lab in enumerate(LABELS):
            for k in range(2):
                spk = str(1000000 + 100 * li + 10 * s_i + k)
                utt = f"{spk}_{CODES[subset]}{'B' if k == 0 else 'a'}{li}"
                sent = SENTENCES[(li + k + s_i) % len(SENTENCES)]
                raw = (f"<SPOKEN_NOISE>{sent[:2]}，{sent[2:]}。" if k == 0
                       else f"{sent[:3]} [laughter] {sent[3:]}！")
                entries.append(dict(utt=utt, spk=spk, label=lab, raw=raw, norm=sent,
                                    rel=f"Audio/{spk}/{phase}/{utt}.wav"))
        if subset == "train_phase1":
            spk = "1009999"
            entries += [
                dict(utt=f"{spk}_x01", spk=spk, label="Mandarin", raw="<SPOKEN_NOISE>",
                     norm=None, rel=f"Audio/{spk}/phase1/{spk}_x01.wav"),
                dict(utt=f"{spk}_x02", spk=spk, label="Mandarin",
                     raw="<NOISE>好的, OK?  2 次", norm="好的OK2次",
                     rel=f"Audio/{spk}/phase1/{spk}_x02.wav"),
                # 'X' < 'x' in byte order (LC_ALL=C), not in a natural-language locale
                dict(utt=f"{spk}_X03", spk=spk, label="Mandarin",
                     raw="“你好”——《世界》…（笑）【注】　再见", norm="你好世界笑注再见",
                     rel=f"Audio/{spk}/phase1/{spk}_X03.wav"),
            ]
        for e in entries:
            seed += 1
            write_wav(root / e["rel"], seed)
        d = root / "Tasks" / "ASR" / subset
        d.mkdir(parents=True)
        for name, key in (("wav.scp", "rel"), ("text", "raw"), ("utt2spk", "spk"),
                          ("utt2subdialect", "label")):
            order = rng.permutation(len(entries))  # a different order in every file
            (d / name).write_text("".join(f"{entries[i]['utt']} {entries[i][key]}\n"
                                          for i in order), encoding="utf-8")
        subsets[subset] = entries
    return SimpleNamespace(root=root, subsets=subsets)


def subset_file(c, subset, name) -> Path:
    return c.root / "Tasks" / "ASR" / subset / name


def edit_line(path: Path, utt: str, new_line=None) -> int:
    """Replace (or delete, new_line None) the line of ``utt``; -> its 1-based line number."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    n = next(i for i, ln in enumerate(lines) if ln.split(" ", 1)[0] == utt)
    if new_line is None:
        del lines[n]
    else:
        lines[n] = new_line + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    return n + 1


def line_of(path: Path, utt: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, ln in enumerate(lines) if ln.split(" ", 1)[0] == utt) + 1


def run(root, out, *extra) -> str:
    """main(argv) in-process; -> what it logged on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert pk.main(["--kespeech", str(root), "--out_dir", str(out), *map(str, extra)]) == 0
    return err.getvalue()


def read_map(path: Path) -> dict:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


def keys(path: Path) -> list:
    return [ln.split(" ", 1)[0] for ln in path.read_text(encoding="utf-8").splitlines()]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)):
            (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "KeSpeech")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("prep")
    c = make_corpus(base / "KeSpeech")
    log = run(c.root, base / "data")
    return SimpleNamespace(corpus=c, data=base / "data", log=log)


def expected(c, subsets, label=None) -> dict:
    return {e["utt"]: e for s in subsets for e in c.subsets[s]
            if e["norm"] is not None and (label is None or e["label"] == label)}


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def test_text_normalisation():
    assert pk.normalize_text("<SPOKEN_NOISE>今天，天气很好。") == "今天天气很好"
    assert pk.normalize_text("你好 [laughter] 世界！<NOISE>") == "你好世界"
    assert pk.normalize_text("“你好”——《世界》…、；：？") == "你好世界"
    assert pk.normalize_text("好的, OK?\t2 次　啊") == "好的OK2次啊"  # ideographic space too
    assert pk.normalize_text("＋１＝２～") == "12"  # full-width ASCII symbols go, digits become ASCII
    assert pk.normalize_text("<SPOKEN_NOISE> [noise] 。") == ""
    assert pk.normalize_text("Ｈｉ，天氣") == "Hi天氣" and pk.normalize_text("天氣", t2s=True) == "天气"


def test_every_dir_has_sorted_consistent_files(prepared):
    data = prepared.data
    for name in OUT_DIRS:
        d = data / name
        assert (d / ".done").is_file(), name
        ids = keys(d / "wav.scp")
        assert ids, name
        assert ids == sorted(ids, key=lambda s: s.encode("utf-8")), f"{name} not C-sorted"
        assert len(set(ids)) == len(ids)
        for f in ("text", "utt2spk", "utt2accent"):
            assert keys(d / f) == ids, f"{name}/{f}"
        spks = keys(d / "spk2utt")
        assert spks == sorted(spks, key=lambda s: s.encode("utf-8"))
        utt2spk = read_map(d / "utt2spk")
        inverse = {}
        for utt, spk in utt2spk.items():
            inverse.setdefault(spk, []).append(utt)
        assert {s: u.split() for s, u in read_map(d / "spk2utt").items()} == inverse
    # byte order, not a natural-language one: 'X' sorts before 'x'
    train = keys(data / "train" / "wav.scp")
    assert train.index("1009999_X03") < train.index("1009999_x02")
    assert read_map(data / "train" / "spk2utt")["1009999"] == "1009999_X03 1009999_x02"


def test_wav_paths_absolute_and_existing(prepared):
    c = prepared.corpus
    rel = {e["utt"]: e["rel"] for s in SUBSETS for e in c.subsets[s]}
    for name in OUT_DIRS:
        for utt, path in read_map(prepared.data / name / "wav.scp").items():
            assert Path(path).is_absolute() and Path(path).is_file(), path
            assert Path(path) == c.root / rel[utt]


def test_sets_hold_the_right_utterances_and_labels(prepared):
    c, data = prepared.corpus, prepared.data
    train = expected(c, ["train_phase1", "train_phase2"])
    dev = expected(c, ["dev_phase1", "dev_phase2"])
    for name, exp in (("train", train), ("dev", dev)):
        acc = read_map(data / name / "utt2accent")
        assert acc == {u: e["label"] for u, e in exp.items()}
        assert set(acc.values()) == set(LABELS)
        assert read_map(data / name / "utt2spk") == {u: e["spk"] for u, e in exp.items()}
        assert read_map(data / name / "text") == {u: e["norm"] for u, e in exp.items()}
    for lab in LABELS:
        exp = expected(c, ["test"], lab)
        assert len(exp) == 2
        assert read_map(data / f"test_{lab}" / "utt2accent") == {u: lab for u in exp}
        assert read_map(data / f"test_{lab}" / "text") == {u: e["norm"] for u, e in exp.items()}
    assert read_map(data / "test_Jiang-Huai" / "utt2accent")  # the hyphenated names


def test_tags_and_punctuation_removed_and_empty_dropped(prepared):
    data = prepared.data
    for name in OUT_DIRS:
        for utt, text in read_map(data / name / "text").items():
            assert text and not (set(text) & PUNCT) and " " not in text, (name, utt, text)
            assert "SPOKEN" not in text and "laughter" not in text
    train_text = read_map(data / "train" / "text")
    assert train_text["1009999_x02"] == "好的OK2次"
    assert train_text["1009999_X03"] == "你好世界笑注再见"
    for f in FILES[:3] + ("utt2accent",):
        assert "1009999_x01" not in read_map(data / "train" / f)
    assert "1009999_x01" not in (data / "train" / "spk2utt").read_text()
    assert "train_phase1: dropped 1 of" in prepared.log and "1009999_x01" in prepared.log


def test_t2s_writes_traditional_characters_as_simplified_and_is_recorded(tmp_path):
    c = make_corpus(tmp_path / "KeSpeech")
    edit_line(subset_file(c, "train_phase1", "text"), "1009999_x02", "1009999_x02 <NOISE>學習語音，ＯＫ")
    run(c.root, tmp_path / "plain")
    assert read_map(tmp_path / "plain" / "train" / "text")["1009999_x02"] == "學習語音OK"
    run(c.root, tmp_path / "t2s", "--t2s", "true")
    assert read_map(tmp_path / "t2s" / "train" / "text")["1009999_x02"] == "学习语音OK"
    meta = json.loads((tmp_path / "t2s" / ".kespeech.json").read_text(encoding="utf-8"))
    assert meta["settings"]["t2s"] is True
    with pytest.raises(pk.KeSpeechError, match="other settings .t2s was None, now True"):  # never mixed
        pk.main(["--kespeech", str(c.root), "--out_dir", str(tmp_path / "plain"), "--t2s", "true"])
    with pytest.raises(pk.KeSpeechError, match="other settings .t2s was True, now None"):
        pk.main(["--kespeech", str(c.root), "--out_dir", str(tmp_path / "t2s")])


def test_source_test_defaults_to_kespeech_mandarin(prepared):
    data = prepared.data
    for f in FILES:
        assert ((data / "source_test" / f).read_bytes()
                == (data / "test_Mandarin" / f).read_bytes())
    assert set(read_map(data / "source_test" / "utt2accent").values()) == {"Mandarin"}
    assert NO_SOURCE_MSG in prepared.log
    meta = json.loads((data / ".kespeech.json").read_text())
    assert meta["settings"]["kespeech"] == str(prepared.corpus.root)
    assert meta["settings"]["source_dir"] is None


def test_accents_txt(prepared):
    assert (prepared.data / "accents.txt").read_text() == "".join(f"{x}\n" for x in LABELS)


def test_source_dir(corpus, tmp_path):
    src = tmp_path / "aishell_test"
    src.mkdir()
    utts = {"S0002W0122": "他说，“明天见”。", "S0002W0121": "<SPOKEN_NOISE>",
            "S0001W0001": "绿色 出行 !"}
    for k, u in enumerate(utts):
        write_wav(tmp_path / "aishell_wav" / f"{u}.wav", 100 + k)
    (src / "wav.scp").write_text("".join(f"{u} {tmp_path / 'aishell_wav' / u}.wav\n"
                                         for u in utts), encoding="utf-8")
    (src / "text").write_text("".join(f"{u} {t}\n" for u, t in utts.items()), encoding="utf-8")
    log = run(corpus.root, tmp_path / "data", "--source_dir", src)
    d = tmp_path / "data" / "source_test"
    assert keys(d / "wav.scp") == ["S0001W0001", "S0002W0122"]  # sorted, empty one dropped
    assert read_map(d / "text") == {"S0001W0001": "绿色出行", "S0002W0122": "他说明天见"}
    assert read_map(d / "utt2spk") == {"S0001W0001": "S0001W0001", "S0002W0122": "S0002W0122"}
    assert set(read_map(d / "utt2accent").values()) == {"Mandarin"}
    assert all(Path(p).is_file() for p in read_map(d / "wav.scp").values())
    assert f"--source_dir {src} is copied into source_test" in log
    assert NO_SOURCE_MSG not in log
    # KeSpeech's Mandarin test set is still there as test_Mandarin
    assert set(keys(tmp_path / "data" / "test_Mandarin" / "wav.scp")) == set(
        expected(corpus, ["test"], "Mandarin"))


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        pk.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--kespeech", "--out_dir", "--train_subsets", "--dev_subsets", "--source_dir",
                 "--check_audio", "https://github.com/KeSpeech/KeSpeech", "test_Jiang-Huai",
                 "utt2accent"):
        assert word in out, word
    assert "KeSpeech" in pk.__doc__ and "licen" in pk.__doc__ and "Tasks/ASR" in pk.__doc__


def test_real_data_preparation_does_not_import_the_demo():
    """prepare_kespeech.py (real data) loads no module of the demo corpus (demo_accents.py, the
    demo's accent rules, or any other demo_*), directly or through another module; nor torch."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import prepare_kespeech; "
            "print(' '.join(sorted(sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code, str(LOCAL)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    loaded = res.stdout.split()
    assert "prepare_kespeech" in loaded and "kespeech_common" in loaded  # the check sees local/'s modules
    assert [m for m in loaded if m.startswith("demo") or "demo_corpus" in m] == []
    assert "torch" not in loaded


# --------------------------------------------------------------------------
# Re-running and conflicting output
# --------------------------------------------------------------------------
def test_rerun_skips_without_touching_anything(corpus, tmp_path):
    data = tmp_path / "data"
    run(corpus.root, data)
    before = snapshot(data)
    log = run(corpus.root, data)
    assert "is complete" in log and "skipping" in log
    assert snapshot(data) == before


def test_rerun_completes_a_missing_dir_and_keeps_the_others(corpus, tmp_path):
    data = tmp_path / "data"
    run(corpus.root, data)
    shutil.rmtree(data / "test_Beijing")
    before = snapshot(data)
    log = run(corpus.root, data)
    after = snapshot(data)
    assert (data / "test_Beijing" / ".done").is_file()
    kept = {k: v for k, v in before.items() if k.startswith(("train/", "dev/", "test_Ji-Lu/"))}
    assert kept and all(after[k] == v for k, v in kept.items())
    assert "wrote 1 directories" in log
    assert not list(data.glob(".prepare_kespeech.tmp.*"))


def test_incomplete_existing_dir_is_refused(corpus, tmp_path):
    data = tmp_path / "data"
    run(corpus.root, data)
    (data / "train" / ".done").unlink()
    with pytest.raises(pk.KeSpeechError, match=r"train exists but is incomplete.*remove"):
        run(corpus.root, data)
    assert not (data / "train" / ".done").exists()  # left as it was


def test_foreign_existing_dir_is_refused(corpus, tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "text").write_text("a b\n")
    (data / "train" / ".done").write_text("made by someone else\n")
    with pytest.raises(pk.KeSpeechError, match=r"not prepared by prepare_kespeech.py.*remove"):
        run(corpus.root, data)
    assert (data / "train" / "text").read_text() == "a b\n"


def test_other_corpus_root_is_refused(corpus, tmp_path):
    data = tmp_path / "data"
    run(corpus.root, data)
    before = snapshot(data)
    other = tmp_path / "KeSpeech2"
    shutil.copytree(corpus.root, other)
    with pytest.raises(pk.KeSpeechError,
                       match=r"prepared from another corpus root .*KeSpeech .*\.kespeech\.json.*"
                             r"remove"):
        run(other, data)
    with pytest.raises(pk.KeSpeechError, match=r"other settings \(train_subsets"):
        run(corpus.root, data, "--train_subsets", "train_phase1")
    assert snapshot(data) == before


# --------------------------------------------------------------------------
# Broken input: a clear error, nothing written
# --------------------------------------------------------------------------
def fails(root, data, match, *extra):
    with pytest.raises(pk.KeSpeechError, match="(?s)" + match):  # messages span lines
        run(root, data, *extra)
    assert not data.exists(), "nothing may be written when the input is broken"


def test_unknown_label(corpus, tmp_path):
    path = subset_file(corpus, "train_phase2", "utt2subdialect")
    utt = corpus.subsets["train_phase2"][5]["utt"]
    n = edit_line(path, utt, f"{utt} Klingon")
    fails(corpus.root, tmp_path / "data",
          rf"train_phase2/utt2subdialect:{n}: unknown subdialect label 'Klingon' for utterance "
          rf"'{utt}'.*Mandarin, Beijing, Jiang-Huai, .*Zhongyuan")


def test_ids_disagree(corpus, tmp_path):
    utt = corpus.subsets["dev_phase1"][3]["utt"]
    edit_line(subset_file(corpus, "dev_phase1", "text"), utt)
    n = line_of(subset_file(corpus, "dev_phase1", "wav.scp"), utt)
    fails(corpus.root, tmp_path / "data",
          rf"dev_phase1: utterance ids disagree.*1 id\(s\) missing from text.*{utt} "
          rf"\(listed in wav.scp:{n}\)")


def test_malformed_line(corpus, tmp_path):
    path = subset_file(corpus, "test", "utt2spk")
    utt = corpus.subsets["test"][0]["utt"]
    n = edit_line(path, utt, utt)
    fails(corpus.root, tmp_path / "data",
          rf"test/utt2spk:{n}: expected '<utterance-id> <speaker>', got only '{utt}'")


def test_missing_audio_file(corpus, tmp_path):
    e = corpus.subsets["train_phase2"][7]
    (corpus.root / e["rel"]).unlink()
    n = line_of(subset_file(corpus, "train_phase2", "wav.scp"), e["utt"])
    fails(corpus.root, tmp_path / "data",
          rf"1 audio file\(s\) listed in wav.scp do not exist:\s+\S*train_phase2/wav.scp:{n}: "
          rf"{corpus.root / e['rel']} \(utterance {e['utt']}\)")


def test_unreadable_audio(corpus, tmp_path):
    e = corpus.subsets["test"][4]
    (corpus.root / e["rel"]).write_bytes(b"this is not a RIFF header at all" * 10)
    fails(corpus.root, tmp_path / "data",
          rf"1 audio file\(s\) are unreadable audio.*test/wav.scp:\d+: .*{e['utt']}")
    # --check_audio false: only existence is checked, so this passes
    log = run(corpus.root, tmp_path / "data", "--check_audio", "false")
    assert e["utt"] in keys(tmp_path / "data" / f"test_{e['label']}" / "wav.scp")
    assert "all exist (" in log


def test_missing_subset_dir(corpus, tmp_path):
    shutil.rmtree(corpus.root / "Tasks" / "ASR" / "dev_phase2")
    fails(corpus.root, tmp_path / "data",
          r"missing KeSpeech subset directory \S*Tasks/ASR/dev_phase2 \(asked for by "
          r"--dev_subsets\)")


def test_missing_file(corpus, tmp_path):
    subset_file(corpus, "train_phase1", "utt2subdialect").unlink()
    fails(corpus.root, tmp_path / "data", r"missing file \S*train_phase1/utt2subdialect")


def test_missing_corpus_root(tmp_path):
    fails(tmp_path / "nowhere", tmp_path / "data",
          r"KeSpeech corpus root \S*nowhere does not exist.*--kespeech")


def test_duplicate_ids_across_subsets(corpus, tmp_path):
    e = corpus.subsets["train_phase1"][2]
    for name, key in (("wav.scp", "rel"), ("text", "raw"), ("utt2spk", "spk"),
                      ("utt2subdialect", "label")):
        with open(subset_file(corpus, "train_phase2", name), "a", encoding="utf-8") as f:
            f.write(f"{e['utt']} {e[key]}\n")
    fails(corpus.root, tmp_path / "data",
          rf"1 utterance id\(s\) appear in more than one subset.*'{e['utt']}' is in both "
          r"train_phase1 and train_phase2")


def test_cli_reports_errors_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--kespeech", str(tmp_path / "nowhere"),
                          "--out_dir", str(tmp_path / "data")], capture_output=True, text=True)
    assert res.returncode == 1
    assert "prepare_kespeech.py: error: KeSpeech corpus root" in res.stderr
    assert "Traceback" not in res.stderr


def test_root_without_tasks_dir_points_to_the_inner_root(corpus, tmp_path):
    # the archive unpacks to KeSpeech/...; giving its parent is a common slip
    fails(corpus.root.parent, tmp_path / "data",
          rf"{corpus.root.parent} has no Tasks/ASR directory.*perhaps --kespeech {corpus.root}")


# --------------------------------------------------------------------------
# Audio that would yield useless features; empty subsets; malformed tags
# --------------------------------------------------------------------------
def test_stereo_audio_is_refused(corpus, tmp_path):
    e = corpus.subsets["dev_phase1"][4]
    write_wav(corpus.root / e["rel"], 7, channels=2)
    n = line_of(subset_file(corpus, "dev_phase1", "wav.scp"), e["utt"])
    fails(corpus.root, tmp_path / "data",
          rf"1 audio file\(s\) are unusable.*dev_phase1/wav.scp:{n}: \S*{e['utt']}.wav "
          rf"\(utterance {e['utt']}\): the audio has 2 channels; expected mono.*sox in.wav -c 1 out.wav")


def test_truncated_wav_is_refused(corpus, tmp_path):
    e = corpus.subsets["train_phase2"][3]
    path = corpus.root / e["rel"]
    write_wav(path, 7, frames=8000)
    with open(path, "r+b") as f:
        f.truncate(44 + 500 * 2)  # libsndfile now reports 500 frames, the header says 8000
    assert soundfile.info(str(path)).frames == 500
    n = line_of(subset_file(corpus, "train_phase2", "wav.scp"), e["utt"])
    fails(corpus.root, tmp_path / "data",
          rf"train_phase2/wav.scp:{n}: \S* \(utterance {e['utt']}\): truncated WAV file: its header "
          r"declares 16000 bytes \(8000 frames\) of audio but the file holds only 1000 bytes "
          r"\(500 frames\)")


def test_transcript_longer_than_the_audio_is_refused(corpus, tmp_path):
    e = corpus.subsets["test"][6]
    edit_line(subset_file(corpus, "test", "text"), e["utt"], f"{e['utt']} {'好' * 16}")
    n = line_of(subset_file(corpus, "test", "wav.scp"), e["utt"])
    fails(corpus.root, tmp_path / "data",
          rf"test/wav.scp:{n}: \S* \(utterance {e['utt']}\): the transcript has 16 characters but "
          r"the audio lasts only 0.30 s, room for 15 \(expected at most one character per 20 ms\)")
    # 15 characters fit into 0.3 s
    edit_line(subset_file(corpus, "test", "text"), e["utt"], f"{e['utt']} {'好' * 15}")
    run(corpus.root, tmp_path / "data")
    assert read_map(tmp_path / "data" / f"test_{e['label']}" / "text")[e["utt"]] == "好" * 15


def test_empty_subset_is_refused(corpus, tmp_path):
    for name in ("wav.scp", "text", "utt2spk", "utt2subdialect"):
        subset_file(corpus, "dev_phase2", name).write_text("")
    fails(corpus.root, tmp_path / "data",
          r"KeSpeech subset \S*Tasks/ASR/dev_phase2 \(asked for by --dev_subsets\) holds no "
          r"utterances: its wav.scp, text, utt2spk, utt2subdialect are empty")


def test_tags_of_every_kind_are_removed():
    assert pk.normalize_text("(noise)今天{breath}天气<SPOKEN_NOISE>很[laughter]好") == "今天天气很好"
    assert pk.normalize_text("＜NOISE＞你好［noise］世界｛breath｝") == "你好世界"  # full-width
    assert pk.normalize_text("（笑）【注】《书》") == "笑注书"  # Chinese brackets: punctuation
    for bad in ("<SPOKEN_NOISE今天", "今天 noise)", "{breath 今天", "<a [b]>今天", "今天＜NOISE"):
        with pytest.raises(pk.MalformedTag, match="a malformed tag: stray"):
            pk.normalize_text(bad)


def test_malformed_tags_are_refused_all_of_them(corpus, tmp_path):
    bad = {"train_phase1": ["<SPOKEN_NOISE今天", "今天(noise", "{breath今天"],
           "dev_phase1": ["今天 SPOKEN_NOISE>", "今天 noise)", "breath}今天", "<NOISE 今天"]}
    where = []
    for subset, texts in bad.items():
        for e, text in zip(corpus.subsets[subset], texts):
            n = edit_line(subset_file(corpus, subset, "text"), e["utt"], f"{e['utt']} {text}")
            where.append(rf"{subset}/text:{n}: utterance '{e['utt']}' has a malformed tag")
    # well-formed tags of every kind are fine
    ok = corpus.subsets["train_phase2"][0]
    edit_line(subset_file(corpus, "train_phase2", "text"), ok["utt"],
              f"{ok['utt']} (noise){ok['norm']}{{breath}}")
    with pytest.raises(pk.KeSpeechError, match=r"^7 transcript\(s\) hold a malformed tag") as err:
        run(corpus.root, tmp_path / "data")
    msg = str(err.value)
    shown = [w for w in where if re.search(w, msg)]
    assert len(shown) == 5 and "... and 2 more" in msg
    assert not (tmp_path / "data").exists()
    for subset, texts in bad.items():  # fix them: the corpus prepares, with the tags removed
        for e in corpus.subsets[subset][:len(texts)]:
            edit_line(subset_file(corpus, subset, "text"), e["utt"], f"{e['utt']} {e['raw']}")
    run(corpus.root, tmp_path / "data")
    assert read_map(tmp_path / "data" / "train" / "text")[ok["utt"]] == ok["norm"]


def test_malformed_tag_in_source_dir_is_refused(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_wav(tmp_path / "src_wav" / "a.wav", 1)
    write_wav(tmp_path / "src_wav" / "b.wav", 2)
    (src / "wav.scp").write_text(f"a {tmp_path}/src_wav/a.wav\nb {tmp_path}/src_wav/b.wav\n")
    (src / "text").write_text("a 你好(noise)世界\nb 你好{breath 世界\n", encoding="utf-8")
    fails(corpus.root, tmp_path / "data",
          r"1 transcript\(s\) hold a malformed tag.*src/text:2: utterance 'b' has a malformed "
          r"tag: stray \{ in '你好\{breath 世界'", "--source_dir", src)
