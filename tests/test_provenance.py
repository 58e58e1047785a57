"""Model provenance: an adapter checkpoint loads only onto the base and with the config it was
trained with (issue 10, cases 1, 2 and 7: a retrained base, a config of another system, one-line
errors)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import ACCENTS, TRANSCRIPTS, make_feats_set, make_llm_dir, train_args  # noqa: E402

from espnet_hdmole.errors import UserError  # noqa: E402
from espnet_hdmole.tasks import provenance  # noqa: E402
from espnet_hdmole.tasks.llm_asr import LLMASRTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MOLE = ["--use_adapter", "true", "--adapter", "hdmole", "--save_strategy", "required_grad_only",
        "--adapter_conf", "target_modules=['linear1', 'linear2']", "--adapter_conf", "num_domains=3",
        "--adapter_conf", "rank=2", "--adapter_conf", "global_router=none"]
SYSTEMS = {"topk": MOLE + ["--adapter_conf", "activation=topk", "--adapter_conf", "top_k=2"],
           "dense": MOLE + ["--adapter_conf", "activation=dense"],
           # experts inside the LLM: their keys start with llm. too, yet llm_dir lacks them
           "llm_topk": MOLE[:6] + ["--adapter_conf", "target_modules=['q_proj']"] + MOLE[8:]
           + ["--adapter_conf", "activation=topk", "--adapter_conf", "top_k=2"]}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("provenance")
    llm = make_llm_dir(w / "llm", "".join(TRANSCRIPTS) + "转写")
    data = make_feats_set(w / "data", TRANSCRIPTS, ACCENTS * 2)
    base = w / "source"
    LLMASRTask.main(cmd=train_args(base, data, llm, epochs=1, iters=3))
    for name, extra in SYSTEMS.items():
        LLMASRTask.main(cmd=train_args(w / name, data, llm, epochs=1, iters=3,
                                       extra=["--init_param", str(base / "valid.acc.ave.pth")] + extra))
    return w, llm, data


def infer(config, model, data, out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "espnet_hdmole.bin.llm_asr_inference", "--asr_train_config", str(config),
         "--asr_model_file", str(model), "--output_dir", str(out),
         "--data_path_and_name_and_type", f"{data}/feats.scp,speech,kaldi_ark", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_provenance_is_recorded_beside_the_checkpoints(work):
    w, _, _ = work
    import json

    rec = json.loads((w / "topk" / "provenance.json").read_text())
    assert rec["model"]["adapter_conf"]["activation"] == "topk"
    assert rec["files"]["init_param"][0]["sha256"]
    assert rec["files"]["model_conf.llm_dir"]


def test_config_of_another_system_is_refused(work):
    """Case 2: the mole_dense config with the mole_topk checkpoint (same parameter names)."""
    w, _, _ = work
    with pytest.raises(UserError, match=r"dense/config.yaml does not describe the model in .*topk/valid.acc.ave.pth"
                                        r".*adapter_conf.activation: 'dense' here, 'topk' when trained"):
        LLMASRTask.build_model_from_file(w / "dense" / "config.yaml", w / "topk" / "valid.acc.ave.pth")
    LLMASRTask.build_model_from_file(w / "topk" / "config.yaml", w / "topk" / "valid.acc.ave.pth")  # its own: fine


def test_decoding_with_a_mismatched_pair_is_one_error_line(work):
    """Case 7: the mismatched config/checkpoint pair is one ERROR line, not a traceback."""
    w, _, data = work
    p = infer(w / "dense" / "config.yaml", w / "topk" / "valid.acc.ave.pth", data, w / "dec_bad")
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and "dense/config.yaml" in errors[0] and "topk/valid.acc.ave.pth" in errors[0]
    # (--verbose true adds the traceback: tests/test_user_errors.py checks run_cli for every command)


def test_a_checkpoint_missing_weights_that_no_base_supplies_is_refused(work):
    """Only the LLM's own weights may be missing (llm_dir supplies them): the experts of an adapter
    inside the LLM are in no base, so a checkpoint without them is refused, not left random."""
    w, _, _ = work
    exp = w / "llm_topk"
    state = torch.load(exp / "valid.acc.ave.pth", weights_only=False)
    experts = [k for k in state if k.startswith("llm.") and "lora_A" in k]
    assert experts
    model, _ = LLMASRTask.build_model_from_file(exp / "config.yaml", exp / "valid.acc.ave.pth")
    torch.testing.assert_close(model.state_dict()[experts[0]], state[experts[0]])
    partial = {k: v for k, v in state.items() if k != experts[0]}
    torch.save(partial, exp / "partial.pth")
    with pytest.raises(UserError, match=r"partial.pth is a partial checkpoint and \['" + experts[0].replace(".", r"\.")
                       + r"'\] are given neither by it nor by --init_param"):
        LLMASRTask.build_model_from_file(exp / "config.yaml", exp / "partial.pth")
    # the LLM's own weights are another matter: the source model without them takes them from llm_dir
    source = torch.load(w / "source" / "valid.acc.ave.pth", weights_only=False)
    llm_keys = [k for k in source if k.startswith("llm.")]
    torch.save({k: v for k, v in source.items() if k not in llm_keys}, w / "source" / "no_llm.pth")
    model, _ = LLMASRTask.build_model_from_file(w / "source" / "config.yaml", w / "source" / "no_llm.pth")
    assert set(llm_keys) <= model.llm_dir_keys


def test_retrained_base_is_refused_and_training_into_its_dir_too(work):
    """Case 1: the base (init_param) changed after the adapter was trained on it."""
    w, llm, data = work
    ckpt = (w / "source" / "valid.acc.ave.pth").resolve()
    state = torch.load(ckpt, weights_only=False)
    key = next(k for k in state if k.startswith("projector."))
    state[key] = state[key] + 0.01
    torch.save(state, ckpt)
    with pytest.raises(UserError, match=r"base checkpoint .*source/valid.acc.ave.pth \(--init_param of .*topk/"
                                        r"config.yaml\) has changed since .*topk/valid.acc.ave.pth was trained on it"):
        LLMASRTask.build_model_from_file(w / "topk" / "config.yaml", w / "topk" / "valid.acc.ave.pth")
    # resuming the run in topk/ from the changed base would mix two models
    with pytest.raises(UserError, match=r"topk holds a run trained from other inputs.*init_param changed"):
        LLMASRTask.main(cmd=train_args(w / "topk", data, llm, epochs=1, iters=3,
                                       extra=["--init_param", str(w / "source" / "valid.acc.ave.pth")] + SYSTEMS["topk"]))


def test_a_record_that_names_a_path_setting_among_the_model_settings_still_matches(tmp_path):
    """Records written before encoder_conf.whisper_dir became a path setting (compared by hash)
    list it among the model settings; such a model still loads, and its directory still resumes."""
    conf = {"encoder": "whisper", "encoder_conf": {"whisper_dir": str(tmp_path / "w"), "freeze": True},
            "model_conf": {"llm_dir": str(tmp_path / "llm")}, "input_size": 1}
    rec = provenance.record(conf)
    assert "whisper_dir" not in rec["model"]["encoder_conf"]
    old = json.loads(json.dumps(rec))
    old["model"]["encoder_conf"]["whisper_dir"] = "/somewhere/else/whisper-base"
    (tmp_path / provenance.NAME).write_text(json.dumps(old))
    (tmp_path / "1epoch.pth").write_bytes(b"")
    provenance.check(tmp_path / "config.yaml", tmp_path / "1epoch.pth", conf, uses_base=False, uses_llm_dir=False)
    provenance.write(conf, tmp_path)  # no "holds a run trained from other inputs"
    # control: another model setting is still a difference
    with pytest.raises(UserError, match="freeze"):
        provenance.check(tmp_path / "config.yaml", tmp_path / "1epoch.pth",
                         {**conf, "encoder_conf": {"whisper_dir": "x", "freeze": False}}, uses_base=False, uses_llm_dir=False)


def test_init_param_keys_read_a_spec_as_espnet_loads_it(tmp_path):
    """The keys an --init_param spec gives (path:src_key:dst_key:excludes): excluded prefixes are
    not given (they were counted as given, so a partial checkpoint missing them loaded silently)."""
    from espnet_hdmole.tasks.provenance import init_param_keys

    ckpt = tmp_path / "base.pth"
    torch.save({"encoder.w": torch.zeros(1), "ctc.w": torch.zeros(1), "llm.a.w": torch.zeros(1)}, ckpt)
    assert init_param_keys(str(ckpt)) == {"encoder.w", "ctc.w", "llm.a.w"}
    assert init_param_keys(f"{ckpt}:::ctc") == {"encoder.w", "llm.a.w"}
    assert init_param_keys(f"{ckpt}:::ctc,encoder") == {"llm.a.w"}
    assert init_param_keys(f"{ckpt}:llm:dec") == {"dec.a.w"}
    assert init_param_keys(f"{ckpt}:llm:dec:llm.a") == set()  # excluded before src_key is taken off
    assert init_param_keys(f"{ckpt}:::") == set()  # an empty field excludes every key, as ESPnet reads it
    torch.save({"module": {"encoder.w": torch.zeros(1)}}, ckpt)  # a wrapped state dict
    assert init_param_keys(str(ckpt)) == {"encoder.w"}
