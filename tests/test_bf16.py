"""bfloat16: the LLM (model_conf.llm_dtype) or the whole model (--train_dtype bfloat16, the decoder's
--dtype, autocast) in bfloat16, while the HDMoLE adapters' parameters and routing and the accent
head stay in float32."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import train_args  # noqa: E402

from espnet2.layers.create_adapter import create_adapter  # noqa: E402

from espnet_hdmole import HDMoLELinear, domain_posterior  # noqa: E402
from espnet_hdmole.asr.accent_head import AccentHead  # noqa: E402
from espnet_hdmole.asr.decoding import beam_search  # noqa: E402
from espnet_hdmole.bin.llm_asr_inference import main as infer_main  # noqa: E402
from espnet_hdmole.errors import UserError  # noqa: E402
from espnet_hdmole.layers.create_hdmole_adapter import adapter_state_dict_keys, hdmole_layers  # noqa: E402
from espnet_hdmole.tasks.llm_asr import LLMASRTask  # noqa: E402
from llm_asr_common import read_kaldi, task_batch, work  # noqa: E402,F401  (work: the shared fixture)

BF16, FP32 = torch.bfloat16, torch.float32
HDMOLE = ["--use_adapter", "true", "--adapter", "hdmole",
          "--adapter_conf", "target_modules=['linear1', 'q_proj', 'v_proj']",
          "--adapter_conf", "num_domains=3", "--adapter_conf", "experts_per_domain=2",
          "--adapter_conf", "rank=4", "--adapter_conf", "keep_trainable=['accent_head']",
          "--model_conf", "aid_weight=0.5"]
LORA = ["--use_adapter", "true", "--adapter", "lora", "--adapter_conf", "target_modules=['linear1', 'q_proj']",
        "--adapter_conf", "rank=4"]


def adapted_model(work, extra=(), adapter=HDMOLE, cast=None):
    """(args, model) of the tiny system with HDMoLE layers (or the ``adapter`` options') in the
    projector and the LLM, built as ESPnet's task does: cast to ``cast`` (if given), then adapted."""
    w, llm, data = work
    args = LLMASRTask.get_parser().parse_args(train_args(w / "unused", data, llm, extra=adapter + list(extra)))
    model = LLMASRTask.build_model(args)
    if cast is not None:
        model.to(cast)
    create_adapter(model, args.adapter, args.adapter_conf)
    return args, model


def float32_parts(model):
    """name -> parameter of everything that stays float32: HDMoLE adapters and the accent head."""
    params = dict(model.named_parameters())
    names = adapter_state_dict_keys(model) + [n for n in params if n.startswith("accent_head.")]
    assert any(".lora_A" in n for n in names) and any(n.startswith("accent_head.") for n in names)
    return {n: params[n] for n in names}


def llm_base_weights(model):
    """The LLM's own (llm_dir) floating-point weights, adapters left out."""
    return {n: p for n, p in model.named_parameters() if n in model.llm_dir_keys}


def test_llm_dtype_bfloat16_trains_with_float32_adapters_and_accent_head(work):
    w, llm, data = work
    args, model = adapted_model(work, ["--model_conf", "llm_dtype=bfloat16"])
    assert {p.dtype for p in llm_base_weights(model).values()} == {BF16}
    assert {p.dtype for p in float32_parts(model).values()} == {FP32}
    _, batch = task_batch(args, data)
    batch["accent"] = torch.tensor([[0], [1], [2], [0], [1], [2]])
    model.train()
    loss, stats, _ = model(**batch)
    assert loss.dtype == FP32 and torch.isfinite(loss).all() and "loss_aid" in stats
    loss.backward()
    for name, p in float32_parts(model).items():
        assert p.dtype == FP32 and p.grad is not None and p.grad.dtype == FP32, name
        assert torch.isfinite(p.grad).all(), name
    layers = hdmole_layers(model)
    assert any(n.startswith("llm.") for n, _ in layers) and any(n.startswith("projector.") for n, _ in layers)
    for name, layer in layers:  # the routing of the last forward: weights, probabilities, thresholds
        assert {layer._last[k].dtype for k in ("w", "p", "tau")} == {FP32}, name
        assert layer.lora_B.grad.abs().sum() > 0, name  # the experts learn (B starts at zero)
    assert all(p.dtype == BF16 for p in llm_base_weights(model).values())  # frozen: no grad, still bf16


def test_llm_dtype_must_be_a_known_dtype(work):
    with pytest.raises(UserError, match="llm_dtype must be one of"):
        adapted_model(work, ["--model_conf", "llm_dtype=bf16"])


@pytest.mark.parametrize("train_dtype, llm_dtype, llm_expected", [
    ("bfloat16", None, BF16),  # --train_dtype bfloat16: the LLM follows the model
    ("float32", "bfloat16", BF16),  # ESPnet's default cast to float32 no longer undoes llm_dtype
])
def test_the_task_hook_restores_dtypes_after_the_cast(work, train_dtype, llm_dtype, llm_expected):
    extra = ["--train_dtype", train_dtype] + (["--model_conf", f"llm_dtype={llm_dtype}"] if llm_dtype else [])
    args, model = adapted_model(work, extra)
    model.to(getattr(torch, train_dtype))  # as ESPnet's main_worker does (here with the adapters too)
    optimizers = LLMASRTask.build_optimizers(args, model)  # the task's hook before the optimiser
    assert {p.dtype for p in float32_parts(model).values()} == {FP32}
    assert {p.dtype for p in llm_base_weights(model).values()} == {llm_expected}
    assert model.encoder.embed[0].weight.dtype == getattr(torch, train_dtype)
    held = {id(p) for g in optimizers[0].param_groups for p in g["params"]}  # ESPnet's: frozen ones too
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(id(p) in held for p in trained) and {p.dtype for p in trained} == {FP32}
    _, batch = task_batch(args, work[2])
    loss, _, _ = model(**batch)  # float32 features into the model of train_dtype
    loss.backward()
    assert all(p.grad is not None for p in trained)


@pytest.mark.parametrize("options, cast", [(["--train_dtype", "bfloat16"], BF16),
                                           (["--model_conf", "llm_dtype=bfloat16"], FP32)])
def test_espnet_lora_trains_on_a_bfloat16_base(work, options, cast):
    """ESPnet's lora adapter (loralib) computes in its base layer's dtype: the hook gives its
    parameters that dtype (bfloat16 in the LLM here), so that it trains at all."""
    args, model = adapted_model(work, options, adapter=LORA, cast=cast)
    LLMASRTask.build_optimizers(args, model)
    model.train()  # loralib unmerges: its training forward multiplies by lora_A
    _, batch = task_batch(args, work[2])
    loss, _, _ = model(**batch)
    loss.backward()
    lora = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    assert {p.dtype for n, p in lora.items() if n.startswith("llm.")} == {BF16}
    assert all(p.grad is not None for p in lora.values())


def test_training_with_train_dtype_bfloat16_saves_float32_adapters(work):
    w, llm, data = work
    out = w / "exp_bf16"
    LLMASRTask.main(cmd=train_args(out, data, llm, epochs=1, iters=3, extra=HDMOLE + ["--train_dtype", "bfloat16"]))
    saved = torch.load(out / "valid.acc.ave.pth", weights_only=False)
    model, conf = LLMASRTask.build_model_from_file(out / "config.yaml", None)
    assert conf.train_dtype == "bfloat16"
    names = float32_parts(model)
    assert {saved[n].dtype for n in names} == {FP32}
    assert saved["encoder.embed.0.weight"].dtype == BF16  # the rest of the model trained in bfloat16
    stats = torch.load(out / "checkpoint.pth", weights_only=False)["reporter"]["stats"][1]
    assert all(torch.isfinite(torch.tensor(stats[s]["loss"])) for s in ("train", "valid"))
    # and it decodes in bfloat16 (the data read as float32, the adapters put back in float32)
    dec = w / "dec_bf16"
    infer_main(["--asr_train_config", str(out / "config.yaml"), "--asr_model_file", str(out / "valid.acc.ave.pth"),
                "--output_dir", str(dec), "--dtype", "bfloat16", "--max_new_tokens", "4",
                "--data_path_and_name_and_type", f"{data}/feats.scp,speech,kaldi_ark"])
    assert sorted(read_kaldi(dec / "1best_recog" / "score")) == sorted(read_kaldi(data / "text"))


@pytest.mark.parametrize("beam", [1, 3])
def test_decoding_with_a_bfloat16_llm(work, beam):
    args, model = adapted_model(work, ["--model_conf", "llm_dtype=bfloat16"])
    _, batch = task_batch(args, work[2], train=False, n=3)
    model.eval()
    hyps = model.recognize(batch["speech"], batch["speech_lengths"], beam_size=beam, max_new_tokens=4)
    assert len(hyps) == 3
    for h in hyps:
        assert 0 < len(h["token_ids"]) <= 4 and all(isinstance(t, int) for t in h["token_ids"])
        assert isinstance(h["text"], str) and h["accent"] in model.accent_list
        assert h["score"] < 0 and h["score"] == h["score"]
    # the search itself casts float32 contexts to the LLM's dtype
    g = torch.full((2, 3), 1 / 3)
    ctx = [torch.randn(5, model.llm.config.hidden_size), torch.randn(3, model.llm.config.hidden_size)]
    with torch.no_grad():
        out = beam_search(model.llm, ctx, model.eos_id, 3, beam, g=g)
    assert len(out) == 2 and all(len(ids) <= 3 for ids, _ in out)


def test_a_layer_around_a_bfloat16_linear_routes_in_float32():
    base = torch.nn.Linear(12, 10).to(BF16)
    layer = HDMoLELinear(base, num_domains=2, experts_per_domain=2, rank=3, name="bf16")
    with torch.no_grad():
        layer.lora_B.normal_(std=0.5)
        layer.router.weight.normal_(std=1.0)
    assert layer.weight.dtype == BF16 and {p.dtype for p in layer.adapter_parameters().values()} == {FP32}
    # the same adapter around a float32 copy of the base: the float32 reference
    ref = HDMoLELinear(torch.nn.Linear(12, 10), num_domains=2, experts_per_domain=2, rank=3, name="fp32")
    ref.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    x, g = torch.randn(2, 5, 12).to(BF16), torch.softmax(torch.randn(2, 2), -1)
    with domain_posterior(g):
        y = layer(x)
        y_ref = ref(x.float())
        with torch.no_grad():  # the delta's factors multiplied in float32, then cast and added
            y_no_grad = layer(x)
    assert y.dtype == BF16 and torch.equal(y_no_grad, y)
    assert torch.equal(layer._last["w"], ref._last["w"]) and layer._last["w"].dtype == FP32
    base_out = torch.nn.functional.linear(x, layer.weight, layer.bias)
    delta_ref = y_ref - torch.nn.functional.linear(x.float(), ref.weight, ref.bias)
    torch.testing.assert_close(y, base_out + delta_ref.to(BF16), rtol=0, atol=0)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == FP32 for p in layer.adapter_parameters().values())


def test_autocast_leaves_the_routing_and_the_accent_head_in_float32():
    layer = HDMoLELinear(torch.nn.Linear(12, 10), num_domains=2, rank=3, activation="token_threshold",
                         combine="mix", name="amp")
    with torch.no_grad():
        layer.lora_B.normal_(std=0.5)
        layer.router.weight.normal_(std=1.0)
    head = AccentHead(12, 3, hidden=8, layers=1, channels=6)
    x, g, lens = torch.randn(2, 7, 12), torch.softmax(torch.randn(2, 2), -1), torch.tensor([7, 5])
    with domain_posterior(g):
        layer(x)
        plain = {k: layer._last[k] for k in ("w", "p", "tau")}
        logits = head(x, lens)
        with torch.autocast("cpu", dtype=BF16):
            y = layer(x)
            amp_logits = head(x, lens)
            with torch.no_grad():  # without autograd too, the delta's factors are multiplied in float32
                y_no_grad = layer(x)
    assert y.dtype == BF16  # the frozen base runs under autocast
    assert torch.equal(y_no_grad, y)
    for k, v in plain.items():
        assert layer._last[k].dtype == FP32 and torch.equal(layer._last[k], v), k
    assert amp_logits.dtype == FP32 and torch.equal(amp_logits, logits)
