"""Layers that read the same input (q/k/v, gate/up) routed together: the same outputs, gradients and
routing statistics as each layer alone, and a member called on another input still right."""
import pytest
import torch

import espnet_hdmole
from espnet_hdmole import HDMoLELinear, domain_posterior
from espnet_hdmole.errors import UserError
from espnet_hdmole.layers.shared_input import SharedInputGroup


def tiny_qwen2(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()


CONF = dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            num_domains=3, experts_per_domain=2, rank=2, alpha=4)


def adapted(groups, seed=0, **conf):
    model = tiny_qwen2(seed)
    espnet_hdmole.create_hdmole_adapter(model, shared_input_groups=groups, **dict(CONF, **conf))
    torch.manual_seed(1)
    for _, layer in espnet_hdmole.hdmole_layers(model):  # every expert and router does something
        with torch.no_grad():
            layer.lora_B.normal_(std=0.3)
            layer.router.weight.normal_(std=1.0)
            layer.router.bias.normal_(std=0.5)
            if hasattr(layer, "threshold_proj"):
                layer.threshold_proj.weight.normal_(std=0.5)
    return model


def run(model, ids, g):
    model.zero_grad()
    with domain_posterior(g):
        logits = model(input_ids=ids, attention_mask=(ids > 0).long()).logits
    # the last 2 positions of utterance 0 are padding (statistics leave them out)
    espnet_hdmole.mark_positions(model, torch.tensor([[1] * 5 + [0] * 2, [1] * 7]))
    logits.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    stats = espnet_hdmole.hdmole_statistics(model, per_layer=True)
    return logits.detach(), grads, stats


@pytest.mark.parametrize("conf", [dict(activation="threshold"), dict(activation="token_threshold"),
                                  dict(activation="topk", top_k=2, output_scale="lora"),
                                  dict(combine="mix", activation="dense")], ids=lambda c: c["activation"])
def test_grouped_equals_alone(conf):
    grouped, alone = adapted(None, **conf), adapted([], **conf)
    groups = {id(m._shared_input_group) for _, m in espnet_hdmole.hdmole_layers(grouped)
              if m._shared_input_group is not None}
    assert len(groups) == 4  # q/k/v and gate/up in each of the 2 blocks
    assert all(m._shared_input_group is None for _, m in espnet_hdmole.hdmole_layers(alone))
    for model in (grouped, alone):
        for _, m in espnet_hdmole.hdmole_layers(model):
            m.train()
            m.lb_weight = 0.1
    ids = torch.randint(0, 50, (2, 7))
    g = torch.softmax(torch.randn(2, 3), -1)
    y1, g1, s1 = run(grouped, ids, g)
    y2, g2, s2 = run(alone, ids, g)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    assert g1.keys() == g2.keys() and any("router" in k for k in g1) and any("threshold" in k for k in g1) == (
        conf["activation"] in ("threshold", "token_threshold"))
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], atol=1e-5, rtol=1e-4, msg=k)
    assert s1.keys() == s2.keys() and "hdmole_lb" in s1
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], atol=1e-6, rtol=1e-5, msg=k)
    # the trainer's statistics (computed over stacks of layers) are each layer's own, averaged
    fast = espnet_hdmole.hdmole_statistics(grouped)
    assert set(fast) == {k for k in s1 if "/" not in k} and "hdmole_use_e5" in fast
    own = [m.routing_statistics() for _, m in espnet_hdmole.hdmole_layers(grouped)]
    for k in ("entropy", "active") + (("tau",) if "tau" in own[0] else ()):
        torch.testing.assert_close(fast[f"hdmole_{k}"], torch.stack([o[k] for o in own]).mean(), msg=k)
    torch.testing.assert_close(fast["hdmole_use_e5"], torch.stack([o["use"] for o in own]).mean(0)[5])


def test_member_called_on_another_input_computes_alone():
    base = [torch.nn.Linear(8, 6) for _ in range(2)]
    a, b = (HDMoLELinear(lin, num_domains=2, experts_per_domain=1, rank=2, name=f"m{i}") for i, lin in enumerate(base))
    for m in (a, b):
        with torch.no_grad():
            m.lora_B.normal_()
            m.router.weight.normal_()
    x1, x2 = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    g = torch.softmax(torch.randn(2, 2), -1)
    with domain_posterior(g):
        want_a, want_b2, want_b1 = a(x1), b(x2), b(x1)
        group = SharedInputGroup([a, b])
        a._shared_input_group = b._shared_input_group = group
        got_a = a(x1)  # computes a and b on x1
        got_b2 = b(x2)  # another input: not the kept result
        got_a2 = a(x1)
        x1.mul_(2)  # modified in place after a's call: b recomputes
        got_b1 = b(x1)
    torch.testing.assert_close(got_a, want_a)
    torch.testing.assert_close(got_a2, want_a)
    torch.testing.assert_close(got_b2, want_b2)
    b._shared_input_group = None
    with domain_posterior(g):
        torch.testing.assert_close(got_b1, b(x1))
    assert not torch.allclose(got_b1, want_b1)  # not the result kept from before the change


def test_bad_groups_are_refused():
    with pytest.raises(espnet_hdmole.errors.UserError, match="shared_input_groups"):
        espnet_hdmole.create_hdmole_adapter(tiny_qwen2(), shared_input_groups="q_proj", **CONF)


def test_outputs_without_autograd_follow_every_change_of_the_parameters():
    """Without autograd (validation, decoding) an in-place change of a parameter (an optimiser
    step, one that leaves no trace in the version counters too) or a loaded state dict is seen
    at once: no packing of the weights is kept between calls."""
    model, other = adapted(None), adapted(None, seed=3)
    ids = torch.tensor([[3, 4, 5, 6, 7, 0, 0], [8, 9, 10, 11, 12, 13, 14]])
    g = torch.softmax(torch.randn(2, 3), -1)

    def logits(m, grad=False):
        with torch.set_grad_enabled(grad), domain_posterior(g):
            return m(input_ids=ids, attention_mask=(ids > 0).long()).logits.detach()

    first = logits(model)
    layer = model.model.layers[0].self_attn.k_proj
    assert layer._shared_input_group is not None
    torch.testing.assert_close(logits(model), first)
    with torch.no_grad():
        layer.lora_B.add_(0.5)  # in place, as an optimiser step
    changed = logits(model)
    assert not torch.allclose(changed, first)
    torch.testing.assert_close(changed, logits(model, grad=True))  # built anew while autograd records
    with torch.no_grad():
        layer.threshold.fill_(2.0)
    torch.testing.assert_close(logits(model), logits(model, grad=True))
    before = logits(model)
    layer.lora_A.data.mul_(2.0)  # (no new version)
    assert not torch.allclose(logits(model), before)
    torch.testing.assert_close(logits(model), logits(model, grad=True))
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(logits(model), logits(other, grad=True))


def _output_nodes(model, g, ids):
    """{layer name: the autograd node that made its output} in a training forward."""
    nodes, hooks = {}, []
    for name, m in espnet_hdmole.hdmole_layers(model):
        def hook(mod, args, out, name=name):
            fn = out.grad_fn
            nodes[name] = type(fn.next_functions[0][0] if type(fn).__name__ == "ViewBackward0" else fn).__name__
        hooks.append(m.register_forward_hook(hook))
    with domain_posterior(g):
        model(input_ids=ids).logits.sum().backward()
    for h in hooks:
        h.remove()
    return nodes


@pytest.mark.parametrize("groups", [None, []], ids=["grouped", "alone"])
@pytest.mark.parametrize("conf", [dict(activation="threshold"), dict(activation="token_threshold", combine="mix")],
                         ids=lambda c: c["activation"])
def test_base_linears_in_the_node_equal_them_outside(monkeypatch, conf, groups):
    """In training the group's node computes each layer's whole output, its frozen base linear
    included (group_mixture.base_in_node): the same outputs, gradients and statistics as the base
    linear run outside the node with the delta added to it (the path taken where it cannot)."""
    from espnet_hdmole.layers import shared_input

    ids = torch.randint(0, 50, (2, 7))
    g = torch.softmax(torch.randn(2, 3), -1)
    inside = adapted(groups, **conf).train()
    assert set(_output_nodes(inside, g, ids).values()) == {"GroupMixtureBackward"}
    y1, g1, s1 = run(inside, ids, g)
    monkeypatch.setattr(shared_input, "base_in_node", lambda layers, x: False)
    outside = adapted(groups, **conf).train()
    assert "GroupMixtureBackward" not in set(_output_nodes(outside, g, ids).values())
    y2, g2, s2 = run(outside, ids, g)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], atol=1e-5, rtol=1e-4, msg=k)
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.parametrize("trained", ["weight", "bias"])
def test_base_linears_stay_outside_the_node_where_they_must(trained):
    """The base linear runs outside the node under autocast (in the autocast dtype) and where its
    weight or bias is trained (it then gets its gradient); elsewhere inside."""
    ids = torch.randint(0, 50, (2, 7))
    g = torch.softmax(torch.randn(2, 3), -1)
    model = adapted(None).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "GroupMixtureBackward" not in set(_output_nodes(model, g, ids).values())
    q = model.model.layers[0].self_attn.q_proj
    getattr(q, trained).requires_grad_(True)
    nodes = _output_nodes(model, g, ids)
    # q's group (q/k/v of block 0) falls back as a whole; the other groups keep the base in the node
    assert "GroupMixtureBackward" not in {nodes[f"model.layers.0.self_attn.{n}_proj"] for n in "qkv"}
    assert nodes["model.layers.1.self_attn.q_proj"] == "GroupMixtureBackward"
    got = getattr(q, trained).grad
    assert got is not None and got.abs().sum() > 0


def test_a_layer_on_a_device_without_autocast_runs_its_base_outside():
    """The meta device has no autocast (asking whether it is enabled there raises): the layer runs
    there, shapes only, with its base linear outside the node."""
    with torch.device("meta"):
        layer = HDMoLELinear(torch.nn.Linear(8, 6), num_domains=3, rank=2)
        x, g = torch.randn(2, 5, 8, requires_grad=True), torch.softmax(torch.randn(2, 3), -1)
    with domain_posterior(g):
        y = layer(x)
    assert y.shape == (2, 5, 6) and y.device.type == "meta"


@pytest.mark.parametrize("trained", [None, "weight"])
def test_without_autograd_the_base_linear_is_added_to_by_the_mixture(monkeypatch, trained):
    """Without autograd (decoding, validation) each layer's whole output comes from
    group_mixture.base_outputs, a trained base weight included (no gradient is asked of it): the
    same logits as the base linear run by the layer with the delta added to it."""
    from espnet_hdmole.layers import group_mixture, shared_input

    ids = torch.randint(0, 50, (2, 7))
    g = torch.softmax(torch.randn(2, 3), -1)
    model = adapted(None)
    if trained:
        model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    calls = []
    real = group_mixture.base_outputs
    monkeypatch.setattr(shared_input, "base_outputs", lambda *a: calls.append(len(a[0])) or real(*a))
    with torch.no_grad(), domain_posterior(g):
        inside = model(input_ids=ids).logits
    # per block: q/k/v, gate/up as groups, o and down alone
    assert sorted(calls) == [1, 1, 1, 1, 2, 2, 3, 3]
    monkeypatch.setattr(shared_input, "base_in_node", lambda layers, x: False)
    calls.clear()
    with torch.no_grad(), domain_posterior(g):
        outside = model(input_ids=ids).logits
    assert calls == []
    torch.testing.assert_close(inside, outside, atol=1e-5, rtol=1e-5)


def test_a_member_called_under_autocast_after_its_sibling_without_computes_anew():
    """The kept result holds for the autocast state it was made under: a member called under
    autocast after its sibling ran without gets its base linear in the autocast dtype."""
    torch.manual_seed(0)
    a, b = (HDMoLELinear(torch.nn.Linear(8, d), num_domains=2, experts_per_domain=1, rank=2, name=f"m{d}")
            for d in (6, 5))
    group = SharedInputGroup([a, b])
    a._shared_input_group = b._shared_input_group = group
    x, g = torch.randn(2, 3, 8), torch.softmax(torch.randn(2, 2), -1)
    with torch.no_grad(), domain_posterior(g):
        assert a(x).dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert b(x).dtype == torch.bfloat16



def test_a_data_parallel_replica_is_refused_with_what_to_do():
    """torch.nn.DataParallel (ESPnet's --ngpu N without --multiprocessing_distributed) copies the
    modules for each device and holds their parameters as plain attributes, not the groups they
    point to: a replica would have failed with a KeyError or 'not in list'. It is one clear error."""
    model = adapted(None)
    q = model.model.layers[0].self_attn.q_proj
    replica = q._replicate_for_data_parallel()  # what DataParallel's replicate makes of it
    with domain_posterior(torch.softmax(torch.randn(2, 3), -1)):
        q(torch.randn(2, 5, 32))  # the layer itself runs
        with pytest.raises(UserError, match=r"DataParallel replica.*--multiprocessing_distributed true"):
            replica(torch.randn(2, 5, 32))
