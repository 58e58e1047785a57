"""The HDMoLE layer's math against a slow reference written expert by expert."""
import math

import pytest
import torch

import espnet_hdmole
from espnet_hdmole import HDMoLELinear, domain_posterior, oracle_posterior


def make_layer(d_in=12, d_out=10, randomize=True, **conf):
    base = torch.nn.Linear(d_in, d_out)
    layer = HDMoLELinear(base, name="test", **conf)
    if randomize:  # give B and the router real values so that every expert contributes
        with torch.no_grad():
            layer.lora_B.normal_(std=0.5)
            layer.router.weight.normal_(std=1.0)
    return layer


def reference_forward(layer, x, g=None):
    """Slow reference: per token, per expert, straight from HDMOLE_SPEC.md."""
    n, e = layer.num_experts, layer.experts_per_domain
    out = torch.nn.functional.linear(x, layer.weight, layer.bias).clone()
    b, t, _ = x.shape
    for bi in range(b):
        for ti in range(t):
            xv = x[bi, ti]
            logits = layer.router.weight @ xv + layer.router.bias
            loc = torch.exp(logits / layer.temperature)
            loc = loc / loc.sum()
            if layer.combine == "product":
                p = torch.stack([g[bi, i // e] * loc[i] for i in range(n)])
                p = p / p.sum()
            elif layer.combine == "mix":
                s = 1 / (1 + torch.exp(-layer.mix_logit))
                p = torch.stack([(1 - s) * loc[i] + s * g[bi, i // e] / e for i in range(n)])
            else:
                p = loc
            if layer.activation in ("threshold", "token_threshold"):
                if layer.activation == "threshold":
                    theta = layer.threshold
                else:
                    theta = layer.threshold_proj.weight[0] @ xv + layer.threshold_proj.bias[0]
                tau = layer.tau_max / (1 + torch.exp(-theta))
                raw = [p[i] - tau if p[i] >= tau else p[i] * 0 for i in range(n)]
                tot = sum(raw)
                w = [r / tot for r in raw]
            elif layer.activation == "topk":
                order = sorted(range(n), key=lambda i: -float(p[i].detach()))[: layer.top_k]
                tot = sum(p[i] for i in order)
                w = [p[i] / tot if i in order else p[i] * 0 for i in range(n)]
            else:
                w = [p[i] for i in range(n)]
            if layer.output_scale == "lora":  # times the number of experts in use
                if layer.activation == "dense":
                    used = n
                elif layer.activation == "topk":
                    used = layer.top_k
                else:
                    used = sum(1 for i in range(n) if p[i] >= tau)
                w = [wi * used for wi in w]
            for i in range(n):
                delta = layer.lora_B[:, i] @ (layer.lora_A[i] @ xv)
                out[bi, ti] = out[bi, ti] + w[i] * layer.scaling * delta
    return out


CONFIGS = [
    dict(num_domains=3, experts_per_domain=2, rank=4, activation="threshold", global_router="predicted"),
    dict(num_domains=3, experts_per_domain=2, rank=4, activation="threshold", combine="mix", mix_init=0.3),
    dict(num_domains=3, experts_per_domain=2, rank=4, activation="token_threshold"),
    dict(num_domains=3, experts_per_domain=2, rank=4, activation="topk", top_k=3, global_router="none"),
    dict(num_domains=3, experts_per_domain=2, rank=4, activation="dense", global_router="none", temperature=2.0),
    dict(num_domains=4, experts_per_domain=1, rank=3, activation="topk", top_k=2, global_router="oracle"),
]
# the same at the LoRA-equivalent output scale (adapter_conf.output_scale: lora)
CONFIGS += [dict(c, output_scale="lora") for c in CONFIGS if c["activation"] != "token_threshold"]
CONFIGS.append(dict(num_domains=3, experts_per_domain=2, rank=4, activation="token_threshold", output_scale="lora"))


@pytest.mark.parametrize("conf", CONFIGS, ids=lambda c: f"{c['activation']}-{c.get('combine', c.get('global_router'))}-{c.get('output_scale', 'expert')}")
def test_batched_equals_reference(conf):
    layer = make_layer(**conf)
    if conf["activation"] == "token_threshold":
        with torch.no_grad():
            layer.threshold_proj.weight.normal_(std=0.5)
    x = torch.randn(2, 5, 12)
    g = torch.softmax(torch.randn(2, conf["num_domains"]), -1)
    with domain_posterior(g):
        got = layer(x)
        with torch.no_grad():  # without autograd the delta's factors are added by the matmul itself
            got_no_grad = layer(x)
    want = reference_forward(layer, x, g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_no_grad, want, atol=1e-5, rtol=1e-5)


def test_fresh_adapter_leaves_output_unchanged():
    base = torch.nn.Linear(12, 10)
    x = torch.randn(3, 7, 12)
    want = base(x)
    layer = HDMoLELinear(base, num_domains=3, experts_per_domain=2, global_router="none")
    torch.testing.assert_close(layer(x), want, atol=0, rtol=0)


def test_oracle_product_uses_only_that_domains_experts():
    layer = make_layer(num_domains=3, experts_per_domain=2, rank=4, activation="dense", global_router="oracle")
    x = torch.randn(2, 4, 12)
    g = oracle_posterior(torch.tensor([1, 2]), 3)
    with domain_posterior(g):
        y = layer(x)
    w = layer._last["w"].view(2, 4, 6)
    assert torch.all(w[0][:, [0, 1, 4, 5]] == 0) and torch.all(w[0][:, [2, 3]] > 0)
    assert torch.all(w[1][:, :4] == 0) and torch.all(w[1][:, 4:] > 0)
    # zeroing the other domains' experts changes nothing; zeroing domain 1's changes utterance 0
    with torch.no_grad():
        layer.lora_B[:, [0, 1, 4, 5]] = 0
    with domain_posterior(g):
        y2 = layer(x)
    torch.testing.assert_close(y2[0], y[0])
    with torch.no_grad():
        layer.lora_B[:, [2, 3]] = 0
    with domain_posterior(g):
        y3 = layer(x)
    assert not torch.allclose(y3[0], y[0])
    torch.testing.assert_close(y3[0], torch.nn.functional.linear(x[0], layer.weight, layer.bias))


def test_topk_activates_exactly_k_and_dense_all():
    for k in (1, 2, 5):
        layer = make_layer(num_domains=3, experts_per_domain=2, activation="topk", top_k=k, global_router="none")
        layer(torch.randn(4, 9, 12))
        w = layer._last["w"]
        assert torch.all((w > 0).sum(-1) == k)
        assert layer.routing_statistics()["active"].item() == pytest.approx(k)
        torch.testing.assert_close(w.sum(-1), torch.ones(36))
    layer = make_layer(num_domains=3, experts_per_domain=2, activation="dense", global_router="none")
    layer(torch.randn(4, 9, 12))
    assert torch.all(layer._last["w"] > 0)
    assert layer.routing_statistics()["active"].item() == 6


def test_threshold_varies_active_count_and_gradients_reach_everything():
    layer = make_layer(d_in=16, num_domains=4, experts_per_domain=2, rank=4, activation="threshold",
                       global_router="predicted", threshold_init=1.0)
    with torch.no_grad():
        layer.router.weight.normal_(std=0.4)
    x = torch.randn(4, 50, 16)
    g = torch.softmax(torch.randn(4, 4), -1)
    with domain_posterior(g):
        y = layer(x)
    counts = layer._last["active"].sum(-1)
    assert counts.min() >= 1
    assert len(torch.unique(counts)) > 1, f"threshold gave a constant number of experts: {counts.unique()}"
    w = layer._last["w"]
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0]))
    assert torch.all(w[~layer._last["active"]] == 0)
    y.pow(2).mean().backward()
    for name in ("threshold", "lora_A", "lora_B"):
        grad = getattr(layer, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert layer.router.weight.grad.abs().sum() > 0
    assert layer.weight.grad is None and not layer.weight.requires_grad


def test_at_least_one_expert_even_with_extreme_threshold():
    layer = make_layer(num_domains=3, experts_per_domain=3, activation="threshold", global_router="none",
                       threshold_init=50.0)
    with torch.no_grad():
        layer.router.weight.zero_()  # uniform p = 1/N, tau just below it
    layer(torch.randn(2, 3, 12))
    assert torch.all(layer._last["active"].sum(-1) >= 1)
    assert torch.isfinite(layer._last["w"]).all()


def test_single_expert_without_routing_is_plain_lora():
    base = torch.nn.Linear(12, 10)
    layer = HDMoLELinear(base, num_domains=1, experts_per_domain=1, rank=4, alpha=8, global_router="none",
                         activation="threshold")
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, 12)
    lora = base(x) + (8 / 4) * (x @ layer.lora_A[0].T @ layer.lora_B[:, 0].T)
    torch.testing.assert_close(layer(x), lora, atol=1e-5, rtol=1e-5)


def test_missing_posterior_and_bad_posteriors_give_clear_errors():
    layer = make_layer(num_domains=3, experts_per_domain=1, global_router="predicted")
    with pytest.raises(RuntimeError, match="no domain posterior is set.*domain_posterior"):
        layer(torch.randn(2, 3, 12))
    with domain_posterior(torch.ones(2, 4) / 4), pytest.raises(ValueError, match="num_domains=3"):
        layer(torch.randn(2, 3, 12))
    with domain_posterior(torch.ones(5, 3) / 3), pytest.raises(ValueError, match="batch"):
        layer(torch.randn(2, 3, 12))
    assert espnet_hdmole.current_domain_posterior() is None
    with pytest.raises(ValueError, match="labels must lie"):
        oracle_posterior(torch.tensor([0, 3]), 3)


def test_bad_layer_settings_are_rejected():
    with pytest.raises(ValueError, match="global_router"):
        make_layer(global_router="maybe")
    with pytest.raises(ValueError, match="needs a global router"):
        make_layer(global_router="none", combine="product")
    with pytest.raises(ValueError, match="top_k"):
        make_layer(num_domains=2, activation="topk", top_k=3)
    with pytest.raises(ValueError, match="activation"):
        make_layer(activation="sparse")
    with pytest.raises(ValueError, match="output_scale"):
        make_layer(output_scale="rank")
    for bad in (-0.1, float("nan"), "0.02", True):
        with pytest.raises(ValueError, match="router_init_std"):
            make_layer(router_init_std=bad)


def test_router_init_std_zero_starts_every_token_at_uniform_routing():
    layer = make_layer(randomize=False, num_domains=3, activation="dense", global_router="none", router_init_std=0.0)
    x = torch.randn(2, 4, 12) * 10
    layer(x)
    w = layer._last["w"]
    torch.testing.assert_close(w, torch.full_like(w, 1 / 3))
    default = make_layer(randomize=False, num_domains=3, activation="dense", global_router="none")
    assert default.router.weight.std().item() == pytest.approx(0.02, rel=0.3)


def test_load_balancing_loss_is_minimal_when_balanced():
    layer = make_layer(num_domains=2, experts_per_domain=2, activation="dense", global_router="none", lb_weight=1.0)
    layer.train()
    with torch.no_grad():
        layer.router.weight.zero_()
    layer(torch.randn(2, 8, 12))
    assert layer._aux_loss.item() == pytest.approx(1.0, abs=1e-5)  # N * sum (1/N)(1/N) = 1
    with torch.no_grad():
        layer.router.bias.copy_(torch.tensor([5.0, 0, 0, 0]))
    layer(torch.randn(2, 8, 12))
    assert layer._aux_loss.item() > 1.5
    layer._aux_loss.backward()
    assert layer.router.bias.grad.abs().sum() > 0


def test_dtype_and_shapes():
    layer = make_layer(num_domains=3, experts_per_domain=2, rank=4, global_router="none")
    assert layer.lora_A.shape == (6, 4, 12) and layer.lora_B.shape == (10, 6, 4)
    assert isinstance(layer.router, torch.nn.Linear) and layer.router.out_features == 6
    assert layer.tau_max == pytest.approx(1 / 6)
    assert layer(torch.randn(7, 12)).shape == (7, 10)
    assert math.isclose(layer.scaling, 8 / 4)


def test_routing_statistics_leave_padding_out_and_split_speech_from_text():
    """Padded positions route near-uniformly; counted, they would pull the heat map and the active
    count toward uniform. After mark_positions only the valid positions (or one kind) count."""
    from espnet_hdmole import PAD, SPEECH, TEXT, position_kinds

    layer = make_layer(num_domains=3, experts_per_domain=1, rank=2, activation="threshold", global_router="none")
    x = torch.randn(2, 6, 12) * 3
    x[1, 3:] = 0.0  # utterance 1 is 3 positions long: zeros after it, as pad_sequence leaves them
    layer(x)
    w = layer._last["w"].view(2, 6, 3)
    unmarked = layer.utterance_routing_weights()
    torch.testing.assert_close(unmarked, w.mean(1))  # without marks: every position, padding included
    kinds = position_kinds(6, torch.tensor([6, 3]), 0, torch.tensor([2, 1]))
    assert kinds[1].tolist() == [SPEECH, TEXT, TEXT, PAD, PAD, PAD]
    assert layer.mark_positions(kinds)
    valid = layer.utterance_routing_weights()
    torch.testing.assert_close(valid[0], w[0].mean(0))
    torch.testing.assert_close(valid[1], w[1, :3].mean(0))
    assert not torch.allclose(valid[1], unmarked[1], atol=1e-3)  # the padding would have changed the figure
    torch.testing.assert_close(layer.utterance_routing_weights(SPEECH)[1], w[1, 0])
    torch.testing.assert_close(layer.utterance_routing_weights(TEXT)[0], w[0, 2:].mean(0))
    active = layer._last["active"].view(2, 6, 3).sum(-1).float()
    stats = layer.routing_statistics()
    torch.testing.assert_close(stats["active"], torch.cat([active[0], active[1, :3]]).mean())
    torch.testing.assert_close(layer.routing_statistics(TEXT)["active"], torch.cat([active[0, 2:], active[1, 1:3]]).mean())
    # a layout that is not (batch, T) is left unmarked
    assert not layer.mark_positions(torch.ones(3, 4, dtype=torch.long))


def test_checkpoint_with_the_former_layout_of_b_loads_transposed():
    """lora_B is (d_out, N, r); a state dict written with the former (N, d_out, r) still loads,
    to the same experts."""
    layer = make_layer(num_domains=3, experts_per_domain=2, rank=4)
    old = dict(layer.state_dict())
    old["lora_B"] = layer.lora_B.detach().transpose(0, 1).contiguous()  # (N, d_out, r)
    fresh = make_layer(num_domains=3, experts_per_domain=2, rank=4, randomize=False)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.lora_B, layer.lora_B)
    g = torch.softmax(torch.randn(2, 3), -1)
    x = torch.randn(2, 5, 12)
    with domain_posterior(g):
        torch.testing.assert_close(fresh(x), layer(x))
