"""The whole recipe at --demo_size tiny: every stage produces its outputs, RESULTS.md holds numbers
for every system, and a re-run of finished stages does no work again."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1"
SYSTEMS = ["full", "lora", "mole_topk", "mole_dense", "hdmole", "hdmole_nohier", "hdmole_topk"]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (tools/install.sh installs it as root)")


def run(args, tmp):
    cmd = ["./run.sh", "--demo_size", "tiny", "--data_dir", str(tmp / "data"), "--dump_dir", str(tmp / "dump"),
           "--exp_dir", str(tmp / "exp")] + args
    env = dict(os.environ, KESPEECH="")
    p = subprocess.run(cmd, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    t0 = time.time()
    out = run([], tmp)
    return tmp, out, time.time() - t0


def test_every_stage_produces_its_outputs(recipe):
    tmp, out, _ = recipe
    accents = (tmp / "data" / "accents.txt").read_text().split()
    assert len(accents) == 9
    for s in ["source_train", "source_dev", "source_test", "train", "dev"] + [f"test_{a}" for a in accents]:
        for f in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2accent"):
            assert (tmp / "data" / s / f).stat().st_size > 0, (s, f)
        assert (tmp / "dump" / "fbank" / s / "feats.scp").stat().st_size > 0
        assert (tmp / "dump" / "fbank" / s / "speech_shape").stat().st_size > 0
    assert (tmp / "dump" / "fbank" / "cmvn_stats.npz").exists()
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp / "exp" / "llm" / f).exists()
    assert (tmp / "exp" / "source" / "valid.acc.ave.pth").exists()
    for s in SYSTEMS:
        assert (tmp / "exp" / s / "valid.acc.ave.pth").exists(), s
        assert json.loads((tmp / "exp" / s / "params.json").read_text())["trainable"] > 0
        for a in accents:
            assert (tmp / "exp" / s / f"decode_test_{a}" / "score_cer" / "result.json").exists()
    stages = [line.split()[0] for line in (tmp / "exp" / "stage_times.txt").read_text().splitlines()]
    assert stages == ["1", "2", "3", "4", "5", "6"]
    for i in range(1, 7):
        assert f"stage {i} done" in out


def test_the_ctc_head_of_step_1_segments_for_every_later_model(recipe):
    """conf/train_source.yaml compresses with the CTC head: stage 4 step 2 takes it from step 1,
    stage 5 keeps it (frozen) in the systems."""
    import torch

    tmp, _, _ = recipe

    def ctc(path):
        return torch.load(path, map_location="cpu", weights_only=False)["ctc.ctc_lo.weight"]

    enc = ctc(tmp / "exp" / "source_encoder" / "valid.loss.best.pth")
    torch.testing.assert_close(ctc(tmp / "exp" / "source" / "valid.acc.ave.pth"), enc)
    torch.testing.assert_close(ctc(tmp / "exp" / "full" / "valid.acc.ave.pth"), enc)


def test_results_hold_numbers_for_every_system(recipe):
    tmp, _, _ = recipe
    text = (tmp / "exp" / "RESULTS.md").read_text()
    for s in ["source"] + SYSTEMS:
        row = next((line for line in text.splitlines() if line.startswith(f"| [{s}]")), None)
        assert row is not None, s
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")][1:]
        cers = cells[:11]  # 9 accents, the accent average, the source CER
        assert all(re.fullmatch(r"\d+\.\d+", c) for c in cers), (s, cers)
        assert (tmp / "exp" / s / "RESULTS.md").exists()
    assert (tmp / "exp" / "plots" / "cer_per_accent.png").stat().st_size > 1000
    assert list((tmp / "exp" / "plots").glob("routing_hdmole_*.png"))


def test_rerun_does_no_work_again(recipe):
    tmp, _, first = recipe
    t0 = time.time()
    out = run(["--stage", "1", "--stop_stage", "5"], tmp)
    assert "skipped" in out
    for s in SYSTEMS:
        assert f"{s}: done, skipped" in out
    assert time.time() - t0 < 0.5 * first


def test_pretrained_model_fine_tunes_and_decodes_into_another_exp_dir(recipe):
    """--pretrained_model: stages 5-6 from a source model trained elsewhere; stage 6 then decodes
    the fine-tuned systems only (the source model is not in this exp dir)."""
    tmp, _, _ = recipe
    other = tmp / "exp_pretrained"
    out = run(["--stage", "5", "--stop_stage", "6", "--pretrained_model", str(tmp / "exp" / "source" / "valid.acc.ave.pth"),
               "--llm_dir", str(tmp / "exp" / "llm"), "--exp_dir", str(other),
               "--train_configs", "conf/finetune_lora.yaml"], tmp)
    assert "stage 6 done" in out
    text = (other / "RESULTS.md").read_text()
    assert any(line.startswith("| [lora]") for line in text.splitlines())
    assert not any(line.startswith("| [source]") for line in text.splitlines())
    assert (other / "lora" / "decode_source_test" / "score_cer" / "result.json").exists()
