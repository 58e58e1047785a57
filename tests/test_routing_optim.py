"""Separate optimisation of the routing parts (--routing_optim_conf): a rate multiplier and a
freeze of the first steps."""
import pytest
import torch
from espnet2.schedulers.warmup_lr import WarmupLR

import espnet_hdmole
from espnet_hdmole import domain_posterior
from espnet_hdmole.asr.routing_optim import (
    RouterFreeze,
    check_routing_optim_conf,
    parameter_groups,
    routing_parameters,
)
from espnet_hdmole.errors import UserError


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(8, 8)
        self.accent_head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.q_proj(x)


def toy(**conf):
    torch.manual_seed(0)
    model = Toy()
    espnet_hdmole.create_hdmole_adapter(model, target_modules=["q_proj"], num_domains=3, rank=2,
                                        keep_trainable=["accent_head"], **conf)
    return model


def step(model, opt, sched=None):
    with domain_posterior(torch.softmax(torch.randn(2, 3), -1)):
        loss = (model(torch.randn(2, 5, 8)) ** 2).mean() + model.accent_head(torch.randn(2, 8)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_routing_parts_are_routers_thresholds_and_the_accent_head():
    names = sorted(n for n, _ in routing_parameters(toy()))
    assert names == ["accent_head.bias", "accent_head.weight", "q_proj.router.bias", "q_proj.router.weight",
                     "q_proj.threshold"]
    names = sorted(n for n, _ in routing_parameters(toy(activation="token_threshold", combine="mix")))
    assert "q_proj.threshold_proj.weight" in names and "q_proj.mix_logit" in names


def test_their_rate_is_scaled_in_a_group_of_their_own_through_the_scheduler():
    model = toy()
    conf = check_routing_optim_conf({"lr_scale": 0.1})
    groups = parameter_groups(model, 1e-3, conf)
    assert [g.get("name") for g in groups] == [None, "routing"] and groups[1]["lr"] == pytest.approx(1e-4)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.Adam(groups, lr=1e-3)
    sched = WarmupLR(opt, warmup_steps=10)
    for _ in range(3):
        step(model, opt, sched)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * opt.param_groups[0]["lr"])
    # without settings: one group, as ESPnet's own optimiser
    assert len(parameter_groups(model, 1e-3, check_routing_optim_conf({}))) == 1


def test_frozen_routers_do_not_move_for_the_first_steps_then_train(tmp_path):
    model = toy(threshold_init=1.0)  # (theta = 0 would not show the weight decay)
    opt = torch.optim.AdamW(parameter_groups(model, 1e-2, check_routing_optim_conf({"freeze_steps": 2})),
                            lr=1e-2, weight_decay=0.1)
    freeze = RouterFreeze(opt, 2)
    routing = {n for n, _ in routing_parameters(model)}
    for k in range(3):
        before = snapshot(model)
        step(model, opt)
        after = snapshot(model)
        moved = {n for n in before if not torch.equal(before[n], after[n])}
        if k < 2:  # neither the gradient nor the weight decay moves them
            assert moved and not (moved & routing), moved
        else:
            assert routing <= moved
        assert opt.param_groups[1]["lr"] == pytest.approx(1e-2)  # the rate is put back after each step
    # a resumed run counts the steps already taken from the optimiser's state
    torch.save(opt.state_dict(), tmp_path / "opt.pth")
    model2 = toy()
    opt2 = torch.optim.AdamW(parameter_groups(model2, 1e-2, check_routing_optim_conf({"freeze_steps": 5})), lr=1e-2)
    opt2.load_state_dict(torch.load(tmp_path / "opt.pth"))
    assert RouterFreeze(opt2, 5).steps_done(opt2) == 3
    assert freeze.steps_done(opt) == 3


@pytest.mark.parametrize("conf, message", [
    ({"lr_scal": 0.1}, "unknown key"),
    ({"lr_scale": 0}, "lr_scale must be a number > 0"),
    ({"freeze_steps": 1.5}, "freeze_steps must be an integer >= 0"),
])
def test_bad_settings_name_the_key(conf, message):
    with pytest.raises(UserError, match=message):
        check_routing_optim_conf(conf)


def test_the_task_builds_the_groups(tmp_path):
    from tiny import TRANSCRIPTS, make_feats_set, make_llm_dir, train_args

    from espnet_hdmole.tasks.llm_asr import LLMASRTask

    data = make_feats_set(tmp_path / "d", TRANSCRIPTS, ["Mandarin", "Beijing", "Southwestern"] * 2)
    llm = make_llm_dir(tmp_path / "llm", "".join(TRANSCRIPTS) + "转写")
    args = LLMASRTask.get_parser().parse_args(train_args(tmp_path / "e", data, llm, extra=[
        "--use_adapter", "true", "--adapter", "hdmole", "--adapter_conf", "target_modules=['q_proj']",
        "--adapter_conf", "num_domains=3", "--adapter_conf", "global_router=none",
        "--routing_optim_conf", "lr_scale=0.5", "--routing_optim_conf", "freeze_steps=3"]))
    model = LLMASRTask.build_model(args)
    from espnet2.layers.create_adapter import create_adapter

    create_adapter(model, "hdmole", args.adapter_conf)
    (opt,) = LLMASRTask.build_optimizers(args, model)
    assert opt.param_groups[-1]["name"] == "routing"
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.5 * opt.param_groups[0]["lr"])
    assert opt._router_freeze.steps == 3
