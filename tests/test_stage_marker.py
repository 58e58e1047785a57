"""Done-markers that know their inputs (local/stage_marker.py) and the file hashing behind them."""
import json
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1"
sys.path.insert(0, str(RECIPE / "local"))
import stage_marker  # noqa: E402

from espnet_hdmole.utils import fingerprint  # noqa: E402


def verdict(tmp, out, *inputs, capsys=None):
    assert stage_marker.main([str(out), "--write", str(tmp / "pending.json"), *inputs]) == 0
    return capsys.readouterr().out.strip()


HERE = "a" * 40


@pytest.fixture(autouse=True)
def code(monkeypatch):
    """The checkout's code pinned to a clean commit HERE, whatever the state of this checkout:
    returns {"now": the current record, "changed": {commit: the tracked files the results depend
    on changed since} (absent: a commit git cannot compare)}."""
    cv = stage_marker.code_record.code_version
    state = {"now": {"commit": HERE, "clean": True}, "changed": {HERE: []}}
    monkeypatch.setattr(cv, "current", lambda repo=cv.REPO: dict(state["now"]))

    def changed_since(commit, repo=cv.REPO, untracked=True):
        assert not untracked  # untracked files (outputs of another exp dir) are not code changes
        return state["changed"].get(commit)

    monkeypatch.setattr(cv, "changed_since", changed_since)
    return state


@pytest.fixture
def inputs(tmp_path):
    cfg = tmp_path / "conf.yaml"
    cfg.write_text("rank: 2\n")
    data = tmp_path / "dump_train"
    data.mkdir()
    (data / "feats.scp").write_text("u1 a.ark:10\n")
    (data / "text").write_text("u1 你好\n")
    (data / "feats.1.ark").write_bytes(b"x")  # covered by feats.scp and .done, not hashed
    return cfg, data


def test_new_done_stale_with_reasons(tmp_path, inputs, capsys):
    cfg, data = inputs
    out = tmp_path / "exp_sys"
    args = ["--file", str(cfg), "--data", str(data), "--value", "options=--max_epoch 3"]
    assert verdict(tmp_path, out, *args, capsys=capsys) == "new"
    out.mkdir()
    (tmp_path / "pending.json").rename(out / ".done")
    assert verdict(tmp_path, out, *args, capsys=capsys) == "done"
    cfg.write_text("rank: 4\n")  # case 3: an edited fine-tuning YAML
    v = verdict(tmp_path, out, *args, capsys=capsys)
    assert v.startswith("stale: ") and f"file {cfg} changed" in v
    cfg.write_text("rank: 2\n")
    (data / "text").write_text("u1 你们\n")
    assert f"data {data} changed" in verdict(tmp_path, out, *args, capsys=capsys)
    (data / "text").write_text("u1 你好\n")
    v = verdict(tmp_path, out, "--file", str(cfg), "--data", str(data), "--value", "options=--max_epoch 4", capsys=capsys)
    assert v == "stale: options changed"
    assert verdict(tmp_path, out, *args, "--file", str(tmp_path / "pending.json"), capsys=capsys).endswith("is a new input")


def test_a_labelled_file_is_its_content_not_its_path(tmp_path, inputs, capsys):
    cfg, _ = inputs
    out = tmp_path / "exp_sys"
    out.mkdir()
    verdict(tmp_path, out, "--file", f"config={cfg}", capsys=capsys)
    (tmp_path / "pending.json").rename(out / ".done")
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text(cfg.read_text())
    assert verdict(tmp_path, out, "--file", f"config={moved}", capsys=capsys) == "done"
    moved.write_text("rank: 4\n")
    assert verdict(tmp_path, out, "--file", f"config={moved}", capsys=capsys) == f"stale: config {moved} changed"


def test_unfinished_runs_resume_only_from_the_same_inputs(tmp_path, inputs, capsys):
    cfg, data = inputs
    out = tmp_path / "exp_sys"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes(b"")
    assert verdict(tmp_path, out, "--file", str(cfg), capsys=capsys).startswith("stale: it holds an unfinished run")
    (tmp_path / "pending.json").rename(out / ".inputs")
    assert verdict(tmp_path, out, "--file", str(cfg), capsys=capsys) == "resume"
    cfg.write_text("rank: 8\n")
    assert verdict(tmp_path, out, "--file", str(cfg), capsys=capsys).startswith("stale: unfinished run from other inputs")


def test_a_marker_of_an_older_recipe_is_stale(tmp_path, inputs, capsys):
    cfg, _ = inputs
    out = tmp_path / "exp_sys"
    out.mkdir()
    (out / ".done").write_text("")
    assert "no record of its inputs" in verdict(tmp_path, out, "--file", str(cfg), capsys=capsys)


def test_a_finished_run_of_other_code_is_kept_and_the_difference_reported(tmp_path, inputs, capsys, code):
    """A code change alone does not redo a stage, but a skip says which code made the output and
    which files the results depend on changed since (the fused-Adam fix of 15ec1a2 changed the
    mixtures' validation, and their directories were skipped without a word)."""
    older, foreign = "b" * 40, "c" * 40
    code["changed"][older] = [f"espnet_hdmole/layers/{n}.py" for n in ("a", "b", "c", "d")]
    cfg, data = inputs
    out, args = tmp_path / "exp_sys", ["--file", str(cfg), "--data", str(data)]
    assert verdict(tmp_path, out, *args, capsys=capsys) == "new"
    out.mkdir()
    record = json.loads((tmp_path / "pending.json").read_text())
    dirty = {"commit": HERE, "clean": False, "changes": "d1"}

    def said(made_by, now=None):
        code["now"] = now or {"commit": HERE, "clean": True}
        (out / ".done").write_text(json.dumps(dict(record, code=made_by)))
        return verdict(tmp_path, out, *args, capsys=capsys)

    assert said({"commit": HERE, "clean": True}) == "done"
    assert said({"commit": None, "clean": None}) == "done"  # made outside git: nothing is known
    assert said({"commit": HERE, "clean": True}, now={"commit": None, "clean": None}) == "done"
    assert said({"commit": older, "clean": True}) == (
        "done: made by code bbbbbbb (clean); since then 4 files the results depend on have changed "
        "(espnet_hdmole/layers/a.py, espnet_hdmole/layers/b.py, espnet_hdmole/layers/c.py and 1 more)")
    code["changed"][older] = ["setup.py"]
    assert said({"commit": older, "clean": True}).endswith("since then 1 file the results depend on has changed (setup.py)")
    assert said({"commit": foreign, "clean": True}) == (
        "done: made by code ccccccc (clean), which git cannot compare with this checkout (a commit it lacks, "
        "or git failed)")
    # uncommitted changes: the same ones (by their digest) say nothing, other or unrecorded ones do
    assert said(dirty, now=dirty) == "done"
    assert said(dirty) == "done: made by code aaaaaaa (uncommitted changes), whose uncommitted changes were other " \
                          "than this checkout's"
    assert said(dirty, now=dict(dirty, changes="d2")).endswith("were other than this checkout's")
    assert said({"commit": HERE, "clean": False}, now=dirty).endswith("whose uncommitted changes were not recorded")
    assert said({"commit": HERE, "clean": None}) == "done: made by code aaaaaaa (state unknown): whether it " \
                                                    "matches this checkout is not known"
    cfg.write_text("rank: 4\n")  # changed inputs still redo it, whatever the code
    assert said({"commit": HERE, "clean": True}).startswith("stale: ")


def test_missing_input_is_one_error_line(tmp_path, capsys):
    assert stage_marker.run_cli(stage_marker.main, [str(tmp_path / "o"), "--write", str(tmp_path / "p"), "--file", "nope.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ERROR: input file 'nope.yaml' of {tmp_path / 'o'} does not exist"]


def test_hash_cache_is_keyed_by_size_and_mtime(tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    monkeypatch.setenv(fingerprint.CACHE_ENV, str(cache))
    f = tmp_path / "model.pth"
    f.write_bytes(b"a" * 100)
    h1 = fingerprint.file_sha256(f)
    assert json.loads(cache.read_text())[str(f.resolve())][2] == h1
    fingerprint._memo.clear()
    f.write_bytes(b"b" * 100)  # same size, new mtime: hashed again
    import os

    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert fingerprint.file_sha256(f) != h1
