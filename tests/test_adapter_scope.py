"""Adapters of ESPnet's table (hdmole, lora) go into the model's adapter_scope only: a Whisper
encoder's q_proj/k_proj/v_proj share their names with the LLM's."""
import pytest
import torch
from espnet2.layers.create_adapter import create_adapter

import espnet_hdmole  # noqa: F401  (registers hdmole, scopes hdmole and lora)
from espnet_hdmole.asr.llm_asr_model import LLMASRModel
from espnet_hdmole.asr.whisper_encoder import WhisperSpeechEncoder
from espnet_hdmole.errors import UserError
from tiny import ACCENTS, TRANSCRIPTS, make_llm_dir, make_whisper_dir

TARGETS = ["projector.linear1", "q_proj", "k_proj", "v_proj"]
ADAPTERS = {
    "hdmole": dict(target_modules=TARGETS, num_domains=len(ACCENTS), experts_per_domain=1, rank=2,
                   global_router="none"),
    "lora": dict(target_modules=TARGETS, rank=2, alpha=4),
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scope")
    return make_whisper_dir(root / "whisper"), make_llm_dir(root / "llm", "".join(TRANSCRIPTS))


def build(dirs, **model_conf):
    whisper_dir, llm_dir = dirs
    encoder = WhisperSpeechEncoder(1, whisper_dir, freeze=True)
    return LLMASRModel(None, None, None, encoder, llm_dir, accent_list=ACCENTS,
                       projector_conf={"stack": 2}, **model_conf)


def matching(model, part):
    return sorted(n for n, m in model.named_modules() if n.startswith(part + ".") and isinstance(m, torch.nn.Linear)
                  and n.rsplit(".", 1)[-1] in ("linear1", "q_proj", "k_proj", "v_proj"))


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_adapters_stay_out_of_the_speech_encoder(dirs, adapter):
    model = build(dirs)
    names = [n for n, _ in model.named_modules()]
    assert any(n.startswith("encoder.") and n.endswith("self_attn.q_proj") for n in names)  # the clash exists
    llm_targets, enc_targets = matching(model, "llm"), matching(model, "encoder")
    assert llm_targets and enc_targets
    create_adapter(model, adapter, dict(ADAPTERS[adapter]))
    params = [n for n, _ in model.named_parameters()]
    enc_params = [n for n in params if n.startswith("encoder.")]
    assert not [n for n in enc_params if "lora" in n or "router" in n]
    for name in llm_targets + ["projector.linear1"]:  # every matching layer of the scope is adapted
        assert any(n.startswith(name + ".") and "lora_A" in n for n in params), name
    # the encoder's state is untouched: same keys as a model without adapters
    plain = build(dirs)
    assert sorted(k for k in model.state_dict() if k.startswith("encoder.")) == \
        sorted(k for k in plain.state_dict() if k.startswith("encoder."))


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_scope_with_the_encoder_adapts_it_too(dirs, adapter):
    model = build(dirs, adapter_scope=["encoder", "projector", "llm"])
    create_adapter(model, adapter, dict(ADAPTERS[adapter]))
    params = [n for n, _ in model.named_parameters()]
    for name in matching(model, "encoder"):
        assert any(n.startswith(name + ".") and "lora_A" in n for n in params), name


def test_targets_only_outside_the_scope_are_an_error(dirs):
    model = build(dirs)
    with pytest.raises(UserError, match=r"outside model_conf.adapter_scope.*encoder\.encoder\.layers\.0\.fc1"):
        create_adapter(model, "hdmole", dict(ADAPTERS["hdmole"], target_modules=["fc1"]))
    with pytest.raises(UserError, match="outside model_conf.adapter_scope"):
        create_adapter(model, "lora", dict(ADAPTERS["lora"], target_modules=["fc1"]))


def test_bad_scope_names_the_parts(dirs):
    with pytest.raises(UserError, match=r"adapter_scope must be a list of the model's parts.*'projector'"):
        build(dirs, adapter_scope=["decoder"])
    with pytest.raises(UserError, match="adapter_scope"):
        build(dirs, adapter_scope="llm")
