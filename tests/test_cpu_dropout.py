"""The CPU dropout mask (espnet_hdmole/layers/cpu_dropout.py) and the fused Adam default."""
import pytest
import torch

from espnet_hdmole.layers.cpu_dropout import CPUDropout, dropout, use_cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_it_drops_a_share_p_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    y = dropout(x, p, training=True)
    dropped = float((y == 0).float().mean())
    assert dropped == pytest.approx(p, abs=0.005)  # 400,000 draws: the standard error is < 0.001
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-4)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)


def test_every_lane_of_a_draw_is_used_alike():
    # four elements share a 64-bit draw: each position must drop with the same probability
    torch.manual_seed(1)
    y = dropout(torch.ones(200_000, 4), 0.25, training=True)
    per_lane = (y == 0).float().mean(0)
    assert torch.allclose(per_lane, torch.full((4,), 0.25), atol=0.01), per_lane


def test_the_seed_makes_it_reproducible_and_draws_differ():
    x = torch.randn(64, 33)
    torch.manual_seed(5)
    a, b = dropout(x, 0.2), dropout(x, 0.2)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(x, 0.2))
    assert not torch.equal(a, b)


def test_the_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(30, 40, requires_grad=True)
    y = dropout(x, 0.4)
    y.sum().backward()
    expected = torch.where(y != 0, torch.full_like(y, 1 / 0.6), torch.zeros_like(y))
    assert torch.allclose(x.grad, expected, rtol=1e-4)


def test_outside_training_and_at_zero_it_is_the_identity():
    x = torch.randn(8, 9)
    assert torch.equal(dropout(x, 0.5, training=False), x)
    assert torch.equal(dropout(x, 0.0), x)
    m = CPUDropout(0.5).eval()
    assert torch.equal(m(x), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_it_replaces_every_dropout_module_of_a_model():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.3),
                                torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.ReLU()))
    model.eval()
    assert use_cpu_dropout(model) == 2
    assert [type(m) for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [CPUDropout, CPUDropout]
    assert model[1].p == 0.3 and model[2][0].p == 0.1 and not model[1].training


def test_the_task_builds_its_models_with_it_and_a_fused_adam(tmp_path):
    from tiny import TRANSCRIPTS, make_feats_set, make_llm_dir, train_args

    from espnet_hdmole.tasks.llm_asr import LLMASRTask

    data = make_feats_set(tmp_path / "d", TRANSCRIPTS, ["Mandarin", "Beijing"] * 3)
    llm = make_llm_dir(tmp_path / "llm", "".join(TRANSCRIPTS) + "转写")
    args = LLMASRTask.get_parser().parse_args(train_args(tmp_path / "e", data, llm, extra=[
        "--encoder_conf", "dropout_rate=0.1"]))
    model = LLMASRTask.build_model(args)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(type(m) is CPUDropout for m in drops)
    (opt,) = LLMASRTask.build_optimizers(args, model)
    assert opt.defaults["fused"] is True
    # a config that chooses the implementation keeps its choice
    args.optim_conf = {"lr": args.optim_conf["lr"], "foreach": True}
    (opt,) = LLMASRTask.build_optimizers(args, model)
    assert not opt.defaults.get("fused") and opt.defaults["foreach"] is True
