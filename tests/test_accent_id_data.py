"""local/accent_id_data.py: the accent-ID head's training set (the accent training set plus some
source utterances), and the stored encoder outputs that go with it."""
import json
import subprocess
import sys
from pathlib import Path

LOCAL = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"
SCRIPT = LOCAL / "accent_id_data.py"


def make_dir(d: Path, utts, accent):
    d.mkdir(parents=True)
    utts = sorted(utts)
    (d / "feats.scp").write_text("".join(f"{u} /x/{u}.ark:{i}\n" for i, u in enumerate(utts)))
    (d / "text").write_text("".join(f"{u} 你好\n" for u in utts))
    (d / "utt2spk").write_text("".join(f"{u} {u.rsplit('-', 1)[0]}\n" for u in utts))
    (d / "utt2accent").write_text("".join(f"{u} {accent}\n" for u in utts))
    (d / "speech_shape").write_text("".join(f"{u} 100,83\n" for u in utts))


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def table(path):
    return dict(line.split(" ", 1) for line in Path(path).read_text().splitlines())


def test_subset_spreads_over_the_sorted_ids_and_keeps_every_table_consistent(tmp_path):
    src = tmp_path / "source_train"
    make_dir(src, [f"SRC-s{s:02d}-{k}" for s in range(10) for k in range(4)], "Mandarin")
    res = run("subset", "--src", src, "--num", 10, "--out", tmp_path / "sub")
    assert res.returncode == 0, res.stderr
    ids = sorted(table(tmp_path / "sub" / "text"))
    assert ids == [f"SRC-s{s:02d}-0" for s in range(10)]  # one per speaker: every 4th id
    for name in ("feats.scp", "utt2spk", "utt2accent", "speech_shape"):
        assert sorted(table(tmp_path / "sub" / name)) == ids, name
    assert (tmp_path / "sub" / "spk2utt").read_text().splitlines()[0] == "SRC-s00 SRC-s00-0"
    # more than there are: all of them
    assert run("subset", "--src", src, "--num", 1000, "--out", tmp_path / "all").returncode == 0
    assert len(table(tmp_path / "all" / "text")) == 40
    res = run("subset", "--src", src, "--num", 0, "--out", tmp_path / "none")
    assert res.returncode != 0 and "--num 0" in res.stderr


def test_combine_joins_sorted_with_the_stored_outputs_and_refuses_clashes(tmp_path):
    train, extra = tmp_path / "train", tmp_path / "extra"
    make_dir(train, ["BEI-s1-0", "ZHY-s1-0"], "Beijing")
    make_dir(extra, ["SRC-s1-0", "SRC-s2-0"], "Mandarin")
    for d in (train, extra):
        (d / "enc.scp").write_text("".join(f"{u} /enc/{u}.ark:1\n" for u in sorted(table(d / "text"))))
    out = tmp_path / "train_accent_id"
    res = run("combine", "--src", train, extra, "--out", out, "--scp", train / "enc.scp", extra / "enc.scp",
              "--out_scp", tmp_path / "enc" / "encoder_out.scp")
    assert res.returncode == 0, res.stderr
    ids = ["BEI-s1-0", "SRC-s1-0", "SRC-s2-0", "ZHY-s1-0"]
    assert list(table(out / "utt2accent")) == ids
    assert table(out / "utt2accent")["SRC-s1-0"] == "Mandarin" and table(out / "utt2accent")["ZHY-s1-0"] == "Beijing"
    assert list(table(tmp_path / "enc" / "encoder_out.scp")) == ids
    # the done marker keeps the sources' (their feature settings); the code record is beside it
    done = json.loads((out / ".done").read_text())
    assert sorted(done["sources"]) == ["extra", "train"] and (out / ".code").is_file()
    before = {f: (out / f).stat().st_mtime_ns for f in ("text", ".done", ".code")}
    assert run("combine", "--src", train, extra, "--out", out).returncode == 0
    assert {f: (out / f).stat().st_mtime_ns for f in before} == before  # unchanged content: not rewritten
    # an id in two directories, a table one lacks, outputs of other utterances: refused, named
    res = run("combine", "--src", train, train, "--out", tmp_path / "x")
    assert res.returncode != 0 and "BEI-s1-0" in res.stderr and "also in an earlier directory" in res.stderr
    (extra / "speech_shape").unlink()
    res = run("combine", "--src", train, extra, "--out", tmp_path / "y")
    assert res.returncode != 0 and f"{extra} lacks speech_shape" in res.stderr
    res = run("combine", "--src", train, tmp_path / "nowhere", "--out", tmp_path / "z")
    assert res.returncode != 0 and f"{tmp_path / 'nowhere'}: no data directory here" in res.stderr
    (train / "enc.scp").write_text("BEI-s1-0 /enc/a.ark:1\n")
    make_dir(tmp_path / "extra2", ["SRC-s1-0", "SRC-s2-0"], "Mandarin")
    res = run("combine", "--src", train, tmp_path / "extra2", "--out", tmp_path / "w", "--scp", train / "enc.scp",
              extra / "enc.scp", "--out_scp", tmp_path / "w.scp")
    assert res.returncode != 0 and "ZHY-s1-0" in res.stderr and not (tmp_path / "w.scp").exists()
    assert not (tmp_path / "w").exists()  # checked before anything is written
