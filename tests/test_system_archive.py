"""A packed system (espnet_hdmole.bin.pack_system) loads and transcribes a wav without the recipe
tree, as the recipe's decoder does; a tampered archive is refused. Packs the tiny recipe's hdmole
system (the recipe fixture of conftest.py)."""
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recipe_common import RECIPE, run  # noqa: E402

DECODE = ["--beam_size", "2", "--max_new_tokens", "24", "--ngram_weight", "0.5"]


def python(args, cwd, check=True):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package only
    p = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, f"{args} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def packed(recipe, tmp_path_factory):
    """hdmole trained and decoded into an exp dir of its own, from the recipe fixture's source
    model, LLM and accent head as they are now (other tests retrain the fixture's source model,
    which leaves the fixture's own systems on an old base: packing those is refused), then packed."""
    tmp, _, _ = recipe
    fixture = tmp / "exp"
    exp = tmp_path_factory.mktemp("archive_exp") / "exp"
    run(["--stage", "5", "--stop_stage", "6", "--pretrained_model", str(fixture / "source" / "valid.acc.ave.pth"),
         "--aid_model", str(fixture / "accent_id" / "valid.acc_aid.ave.pth"), "--llm_dir", str(fixture / "llm"),
         "--ngram_lm", str(fixture / "ngram" / "lm.arpa"), "--exp_dir", str(exp),
         "--train_configs", "conf/finetune_hdmole.yaml"], tmp)
    out = tmp_path_factory.mktemp("archive") / "hdmole.tar"
    python(["-m", "espnet_hdmole.bin.pack_system", "--exp_dir", str(exp / "hdmole"), "--out", str(out),
            "--ngram_lm", str(fixture / "ngram" / "lm.arpa"), "--results", str(exp / "RESULTS.md")] + DECODE, RECIPE)
    return tmp, exp, out


def first_test_utterance(tmp):
    uid, path = (tmp / "data" / "test_Beijing" / "wav.scp").read_text().splitlines()[0].split(maxsplit=1)
    return uid, path


def test_the_archive_holds_the_system_and_its_base(packed):
    _, _, out = packed
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        readme = tar.extractfile("README.md").read().decode()
    for name in ("config.yaml", "model.pth", "provenance.json", "cmvn_stats.npz", "ngram.arpa", "base/0.pth"):
        assert name in names and name in manifest["files"], name
    assert any(n.startswith("llm/") for n in names)
    assert manifest["system"] == "hdmole" and manifest["feats_type"] == "fbank_pitch"
    assert manifest["decode"] == {"beam_size": 2, "max_new_tokens": 24, "length_penalty": 1.0, "ngram_weight": 0.5}
    assert "| [hdmole]" in readme


def test_it_transcribes_a_wav_without_the_recipe_tree_as_the_decoder_does(packed, tmp_path):
    tmp, exp, out = packed
    uid, wav = first_test_utterance(tmp)
    code = ("import sys; from espnet_hdmole.system_archive import load_system; "
            "s = load_system(sys.argv[1], sys.argv[2]); print(repr(s.transcribe(sys.argv[3])))")
    got = python(["-c", code, str(out), str(tmp_path / "unpacked"), wav], tmp_path).stdout.strip().splitlines()[-1]
    # the recipe's decoder on the same utterance (features of stage 2, the same settings)
    feats, ngram = tmp / "dump" / "fbank_pitch" / "test_Beijing", tmp / "exp" / "ngram" / "lm.arpa"
    (tmp_path / "key").write_text(uid + "\n")
    python(["-m", "espnet_hdmole.bin.llm_asr_inference", "--asr_train_config", str(exp / "hdmole" / "config.yaml"),
            "--asr_model_file", str(exp / "hdmole" / "valid.acc.ave.pth"), "--output_dir", str(tmp_path / "dec"),
            "--data_path_and_name_and_type", f"{feats}/feats.scp,speech,kaldi_ark", "--key_file", str(tmp_path / "key"),
            "--batch_size", "1", "--ngram_file", str(ngram)] + DECODE, RECIPE)
    want = (tmp_path / "dec" / "1best_recog" / "text").read_text().rstrip("\n").split(" ", 1)
    assert want[0] == uid
    assert got == repr(want[1] if len(want) > 1 else "")


def test_a_tampered_archive_is_refused(packed, tmp_path):
    _, _, out = packed
    bad = tmp_path / "bad.tar"
    with tarfile.open(out) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "base/0.pth":
                data = data[:-1] + bytes([data[-1] ^ 1])
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    code = "import sys; from espnet_hdmole.system_archive import load_system; load_system(sys.argv[1])"
    p = python(["-c", code, str(bad)], tmp_path, check=False)
    assert p.returncode != 0 and "base/0.pth is missing or not the file it was packed with" in p.stderr


def test_by_default_it_packs_the_settings_stage_6_scored_the_system_with(packed, tmp_path):
    _, exp, _ = packed
    out = tmp_path / "hdmole_default.tar"
    python(["-m", "espnet_hdmole.bin.pack_system", "--exp_dir", str(exp / "hdmole"), "--out", str(out)], RECIPE)
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    # run.sh's decode_args and hdmole.sh's --ngram_weight, with the n-gram LM of stage 3
    assert manifest["decode"] == {"beam_size": 4, "max_new_tokens": 48, "length_penalty": 1.0, "ngram_weight": 0.5}
    assert "ngram.arpa" in manifest["files"] and "base/0.pth" in manifest["files"]


def test_packing_never_overwrites_an_archive(packed):
    _, exp, out = packed
    before = out.read_bytes()
    p = python(["-m", "espnet_hdmole.bin.pack_system", "--exp_dir", str(exp / "hdmole"), "--out", str(out)],
               RECIPE, check=False)
    assert p.returncode == 1 and f"ERROR: {out} exists already" in p.stderr
    assert out.read_bytes() == before
