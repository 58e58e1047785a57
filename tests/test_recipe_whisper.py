"""The recipe switch --whisper_dir on the tiny demo: the source model on a frozen (tiny, random)
Whisper encoder, stage 4 without its CTC steps, adapters in the projector and LLM only, decoding
and scoring. It reuses the data and the LLM of the recipe fixture (conftest.py)."""
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from recipe_common import run, run_fails  # noqa: E402
from tiny import make_whisper_dir  # noqa: E402

SYSTEMS = ["lora", "hdmole"]


@pytest.fixture(scope="module")
def whisper_run(recipe, tmp_path_factory):
    fixture_tmp, _, _ = recipe
    tmp = tmp_path_factory.mktemp("whisper_recipe")
    # a 30-s window as in real Whisper models: the demo's utterances are longer than the test's 2 s
    wdir = make_whisper_dir(tmp / "whisper", max_source_positions=1500)
    (tmp / "data").symlink_to(fixture_tmp / "data")
    out = run(["--stage", "2", "--stop_stage", "6", "--whisper_dir", wdir,
               "--llm_dir", str(fixture_tmp / "exp" / "llm"), "--ngram_lm", str(fixture_tmp / "exp" / "ngram" / "lm.arpa"),
               "--train_configs", " ".join(f"conf/finetune_{s}.yaml" for s in SYSTEMS)], tmp)
    return tmp, out, wdir


def test_the_source_model_runs_on_the_whisper_encoder_without_ctc_steps(whisper_run):
    tmp, out, wdir = whisper_run
    exp = tmp / "exp"
    assert "step 1:" not in out and "step 1b" not in out
    assert (tmp / "dump" / "raw" / "source_train" / "wav.scp").exists()
    conf = yaml.safe_load((exp / "source" / "config.yaml").read_text())
    assert conf["encoder"] == "whisper"
    assert conf["encoder_conf"]["whisper_dir"] == wdir
    assert conf["model_conf"].get("ctc_compress", "none") == "none"
    head = yaml.safe_load((exp / "accent_id" / "config.yaml").read_text())
    assert head["model_conf"]["accent_head_conf"]["input"] == "encoder"  # no CTC head to read


def test_adapters_stay_out_of_the_whisper_encoder(whisper_run):
    tmp, _, _ = whisper_run
    for system in SYSTEMS:
        conf = yaml.safe_load((tmp / "exp" / system / "config.yaml").read_text())
        assert "q_proj" in conf["adapter_conf"]["target_modules"]  # a name Whisper's layers have too
        state = torch.load(tmp / "exp" / system / "valid.acc.ave.pth", map_location="cpu")
        adapters = [k for k in state if "lora_A" in k]
        assert any(k.startswith("llm.") for k in adapters) and any(k.startswith("projector.") for k in adapters)
        assert not [k for k in state if k.startswith("encoder.")], system


def test_every_system_is_decoded_and_scored(whisper_run):
    tmp, out, _ = whisper_run
    assert "stage 6 done" in out
    rows = [line for line in (tmp / "exp" / "RESULTS.md").read_text().splitlines() if line.startswith("| [")]
    assert [r.split("]")[0][3:] for r in rows] == ["source"] + SYSTEMS


def test_a_whisper_rerun_does_no_work_again(whisper_run):
    tmp, _, wdir = whisper_run
    fixture_data = (tmp / "data").resolve()
    out = run(["--stage", "4", "--stop_stage", "5", "--whisper_dir", wdir,
               "--llm_dir", str(fixture_data.parent / "exp" / "llm"),
               "--train_configs", " ".join(f"conf/finetune_{s}.yaml" for s in SYSTEMS)], tmp)
    assert "step 2: the LLM-based ASR model" not in out and "redone" not in out


@pytest.mark.parametrize("args, message", [
    (["--feats_type", "fbank"], "--whisper_dir reads waveforms: --feats_type must be raw, not 'fbank'"),
    (["--source_config", "conf/train_source.yaml"], "--whisper_dir needs a source config with 'encoder: whisper'"),
    (["--source_encoder_config", "conf/train_source_encoder.yaml"], "leave out --source_encoder_config"),
])
def test_contradicting_settings_are_refused(tmp_path, args, message):
    wdir = make_whisper_dir(tmp_path / "whisper")
    assert message in run_fails(["--whisper_dir", wdir] + args, tmp_path)


def test_a_directory_without_whisper_is_refused(tmp_path):
    assert "has no config.json" in run_fails(["--whisper_dir", str(tmp_path)], tmp_path)
