"""The hand-written backward of the HDMoLE mixture (espnet_hdmole.layers.group_mixture) against
autograd: through the slow expert-by-expert reference of test_hdmole_layer, through the layer's
own routing (``route``) with dropout, and by finite differences in float64."""
import pytest
import torch

from espnet_hdmole import HDMoLELinear, domain_posterior
from espnet_hdmole.layers.group_mixture import GroupMixture, layer_parameters
from test_hdmole_layer import CONFIGS, make_layer, reference_forward


def grads_of(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


@pytest.mark.parametrize("conf", CONFIGS, ids=lambda c: f"{c['activation']}-{c.get('combine', c.get('global_router'))}-{c.get('output_scale', 'expert')}")
def test_gradients_equal_autograd_through_the_reference(conf):
    layer = make_layer(**conf)
    with torch.no_grad():
        layer.router.bias.normal_(std=0.5)
        if conf["activation"] == "token_threshold":
            layer.threshold_proj.weight.normal_(std=0.5)
    x = torch.randn(2, 5, 12, requires_grad=True)
    # the posterior as a function of logits, so that its gradient (joint accent-head training) is checked
    v = torch.randn(2, conf["num_domains"], requires_grad=True)
    target = torch.randn(2, 5, 10)
    params = [p for p in layer.parameters() if p.requires_grad]
    wrt = [x, v] + params

    def loss_of(forward):
        g = torch.softmax(v, -1) if conf.get("global_router") != "oracle" else torch.eye(conf["num_domains"])[[1, 3]]
        with domain_posterior(g):
            return (forward(g) * target).sum()

    got = grads_of(loss_of(lambda g: layer(x)), wrt)
    want = grads_of(loss_of(lambda g: reference_forward(layer, x, g)), wrt)
    names = ["x", "posterior logits"] + [n for n, p in layer.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, got, want):
        if b is None:  # (the oracle posterior does not depend on v)
            assert a is None or torch.all(a == 0), name
            continue
        assert a is not None, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    assert got[names.index("lora_B")].abs().sum() > 0
    if conf.get("global_router") != "oracle":  # (a one-hot posterior over single experts leaves the router nothing to do)
        assert got[names.index("router.weight")].abs().sum() > 0


@pytest.mark.parametrize("conf", [dict(activation="threshold"), dict(activation="dense", global_router="none"),
                                  dict(activation="topk", top_k=2, combine="mix")], ids=lambda c: c["activation"])
def test_load_balancing_and_dropout_gradients_equal_autograd_through_route(conf):
    """With expert dropout the experts read another input than the router; the load-balancing loss
    reads the local router's softmax: both against autograd through the layer's own routing."""
    layer = make_layer(num_domains=3, experts_per_domain=2, rank=3, dropout_rate=0.3, lb_weight=0.5, **conf)
    layer.train()
    x = torch.randn(2, 6, 12, requires_grad=True)
    g = torch.softmax(torch.randn(2, 3), -1)
    target = torch.randn(2, 6, 10)
    params = [p for p in layer.parameters() if p.requires_grad]
    with domain_posterior(g):
        torch.manual_seed(5)
        loss = (layer(x) * target).sum() + layer._aux_loss
        got = grads_of(loss, [x] + params)

        torch.manual_seed(5)  # the same dropout mask: the layer's first random draw
        xt = x.reshape(-1, 12)
        xd = layer.lora_dropout(xt)
        w, p, local, active, tau = layer.route(xt, x.shape[:-1])
        c = layer.scaling  # (output_scale 'expert')
        y = torch.nn.functional.linear(xt, layer.weight, layer.bias)
        for i in range(layer.num_experts):
            y = y + (w[:, i:i + 1] * c) * ((xd @ layer.lora_A[i].T) @ layer.lora_B[:, i].T)
        dispatch = (w if active is None else active).float()
        f = (dispatch / dispatch.sum(-1, keepdim=True)).mean(0).detach()  # (the dispatch shares are constants)
        aux = layer.lb_weight * layer.num_experts * (f * local.mean(0)).sum()
        want = grads_of((y.view(2, 6, 10) * target).sum() + aux, [x] + params)
    for (name, _), a, b in zip([("x", None)] + [(n, p) for n, p in layer.named_parameters() if p.requires_grad],
                               got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("conf", [dict(activation="threshold", experts_per_domain=2),
                                  dict(activation="token_threshold", combine="mix", temperature=1.5),
                                  dict(activation="topk", top_k=2, output_scale="lora")],
                         ids=lambda c: c["activation"])
@pytest.mark.parametrize("with_base", [False, True], ids=["delta", "with_base"])
def test_group_of_two_passes_gradcheck_in_float64(conf, with_base):
    """Finite differences of GroupMixture itself, two layers routed together, every input; with
    ``with_base`` the node's outputs include the frozen base linears (the input's gradient
    through them)."""
    torch.manual_seed(3)
    layers = [HDMoLELinear(torch.nn.Linear(6, 5).double(), num_domains=3, rank=2, **conf) for _ in range(2)]
    for m in layers:
        with torch.no_grad():
            m.lora_B.normal_(std=0.5)
            m.router.weight.normal_(std=1.0)
            if hasattr(m, "threshold_proj"):
                m.threshold_proj.weight.normal_(std=0.5)
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    g = torch.softmax(torch.randn(2, 3, dtype=torch.float64), -1).requires_grad_()
    tok = torch.randn(2, 1, 8, dtype=torch.float64, requires_grad=True) if conf["activation"] == "token_threshold" else None
    params = [p for m in layers for p in layer_parameters(m)]

    def mixture(x, g, tok, *params):  # the layers read their parameters, which gradcheck perturbs in place
        *deltas, local, routing = GroupMixture.apply(layers, x, None, g, tok, True, with_base, *params)
        return (*deltas, local)

    assert torch.autograd.gradcheck(mixture, (x, g, tok, *params), eps=1e-6, atol=1e-5, fast_mode=True)


def test_no_packing_outlives_a_fused_optimiser_step_and_a_decoding_packs_once(monkeypatch):
    """PyTorch's fused Adam changes the parameters in place without advancing their version
    counters: a packing kept from one call to the next, checked against the versions, validated
    every later epoch with the first epoch's experts. Outside ``parameters_fixed`` the packing is
    made at every call; inside (a decoding) once."""
    import espnet_hdmole.layers.group_mixture as gm

    layer = make_layer(num_domains=3, experts_per_domain=2, rank=2)
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.1, fused=True)
    x, g = torch.randn(2, 4, 12), torch.softmax(torch.randn(2, 3), -1)
    with domain_posterior(g):
        with torch.no_grad():
            before = layer(x)
        versions = [p._version for p in params]
        (layer(x) ** 2).sum().backward()
        opt.step()
        assert [p._version for p in params] == versions  # (the trap: nothing shows the change)
        with torch.no_grad():
            after = layer(x)
            want = reference_forward(layer, x, g)  # (the slow reference reads the parameters as they are)
        assert not torch.allclose(after, before)
        torch.testing.assert_close(after, want, atol=1e-5, rtol=1e-5)

        packs = []
        real = gm.layer_parameters
        monkeypatch.setattr(gm, "layer_parameters", lambda m: packs.append(m) or real(m))
        with torch.no_grad():
            layer(x), layer(x)
            assert len(packs) == 2  # one packing a call
            with gm.parameters_fixed():
                got = [layer(x) for _ in range(3)]
            assert len(packs) == 3  # one in the block
    for y in got:
        torch.testing.assert_close(y, after)
