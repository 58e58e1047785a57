"""The hdmole adapter in ESPnet's adapter table: matching, freezing, saving and statistics."""
import pytest
import torch

import espnet_hdmole
from espnet_hdmole import HDMoLELinear, domain_posterior, hdmole_state_dict, load_hdmole_state_dict


class Toy(torch.nn.Module):
    """A projector + two attention-like blocks, named like the LLM-ASR model's parts."""

    def __init__(self):
        super().__init__()
        self.projector = torch.nn.Sequential()
        self.projector.add_module("linear1", torch.nn.Linear(8, 16))
        self.projector.add_module("act", torch.nn.ReLU())
        self.projector.add_module("linear2", torch.nn.Linear(16, 16))
        self.layers = torch.nn.ModuleList()
        for _ in range(2):
            blk = torch.nn.Module()
            blk.q_proj = torch.nn.Linear(16, 16)
            blk.v_proj = torch.nn.Linear(16, 16, bias=False)
            blk.norm = torch.nn.LayerNorm(16)
            self.layers.append(blk)
        self.accent_head = torch.nn.Linear(16, 3)

    def forward(self, x):
        h = self.projector(x)
        for blk in self.layers:
            h = blk.norm(h + blk.q_proj(h) + blk.v_proj(h))
        return h


CONF = dict(target_modules=["linear1", "linear2", "q_proj", "v_proj"], num_domains=3, experts_per_domain=2,
            rank=4, alpha=8, keep_trainable=["accent_head"])


def test_registered_in_espnet_table_and_wraps_targets():
    from espnet2.layers.create_adapter import create_adapter, create_adapter_fn_table

    assert create_adapter_fn_table["hdmole"].__wrapped__ is espnet_hdmole.create_hdmole_adapter
    model = Toy()
    x = torch.randn(2, 5, 8)
    before = model(x)
    create_adapter(model, "hdmole", dict(CONF))
    wrapped = [n for n, _ in espnet_hdmole.hdmole_layers(model)]
    assert wrapped == ["projector.linear1", "projector.linear2", "layers.0.q_proj", "layers.0.v_proj",
                       "layers.1.q_proj", "layers.1.v_proj"]
    assert isinstance(model.accent_head, torch.nn.Linear) and not isinstance(model.accent_head, HDMoLELinear)
    with domain_posterior(torch.full((2, 3), 1 / 3)):
        torch.testing.assert_close(model(x), before)  # fresh adapter: same outputs
    # the base model's keys are kept, so its checkpoint still loads
    assert "projector.linear1.weight" in model.state_dict()


def test_only_adapter_parameters_are_trainable():
    model = Toy()
    espnet_hdmole.create_hdmole_adapter(model, **CONF)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "accent_head.weight" in trainable
    for n in trainable - {"accent_head.weight", "accent_head.bias"}:
        assert any(s in n for s in ("lora_A", "lora_B", "router", "threshold")), n
    assert not any(n.endswith(".weight") and "router" not in n and "accent" not in n for n in trainable)
    n_layers = 6
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "accent" not in n)
    per_layer = lambda d_in, d_out: 6 * 4 * (d_in + d_out) + (d_in * 6 + 6) + 1  # noqa: E731
    assert n_adapter == per_layer(8, 16) + (n_layers - 1) * per_layer(16, 16)


def test_no_match_lists_the_linear_layers():
    with pytest.raises(ValueError, match=r"no linear layer matches.*projector\.linear1.*layers\.1\.v_proj"):
        espnet_hdmole.create_hdmole_adapter(Toy(), target_modules=["query"])
    # suffixes match whole name parts only: "proj" is not "q_proj"
    with pytest.raises(ValueError, match="no linear layer matches"):
        espnet_hdmole.create_hdmole_adapter(Toy(), target_modules=["proj"])


def test_unknown_key_is_rejected():
    with pytest.raises(ValueError, match=r"unknown key\(s\).*'num_expert'"):
        espnet_hdmole.create_hdmole_adapter(Toy(), target_modules=["q_proj"], num_expert=4)


def test_adapter_only_state_dict_round_trips(tmp_path):
    model = Toy()
    espnet_hdmole.create_hdmole_adapter(model, **CONF)
    with torch.no_grad():
        for _, layer in espnet_hdmole.hdmole_layers(model):
            layer.lora_B.normal_()
            layer.threshold.fill_(0.7)
    model.eval()  # eval must not merge or otherwise alter anything (the loralib trap)
    sd = hdmole_state_dict(model, extra_prefixes=["accent_head"])
    assert all(("lora_" in k or "router" in k or "threshold" in k or k.startswith("accent_head")) for k in sd)
    assert not any(k.endswith("q_proj.weight") for k in sd)
    torch.save(sd, tmp_path / "adapter.pth")
    x = torch.randn(2, 5, 8)
    g = torch.softmax(torch.randn(2, 3), -1)
    with domain_posterior(g):
        want = model(x)

    torch.manual_seed(1)
    fresh = Toy()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if k not in sd}, strict=False)
    espnet_hdmole.create_hdmole_adapter(fresh, **CONF)
    fresh.eval()
    with domain_posterior(g):
        assert not torch.allclose(fresh(x), want)
    load_hdmole_state_dict(fresh, torch.load(tmp_path / "adapter.pth"))
    with domain_posterior(g):
        torch.testing.assert_close(fresh(x), want, atol=0, rtol=0)

    partial = dict(sd)
    partial.pop(next(k for k in sd if "lora_B" in k))
    with pytest.raises(KeyError, match="missing"):
        load_hdmole_state_dict(fresh, partial)


def test_statistics_collected_in_one_call():
    model = Toy()
    espnet_hdmole.create_hdmole_adapter(model, lb_weight=0.01, **CONF)
    model.train()
    with domain_posterior(torch.softmax(torch.randn(2, 3), -1)):
        model(torch.randn(2, 5, 8))
    stats = espnet_hdmole.hdmole_statistics(model, per_layer=True)
    for k in ("hdmole_active", "hdmole_tau", "hdmole_entropy", "hdmole_lb"):
        assert k in stats and torch.isfinite(stats[k])
    assert 1 <= stats["hdmole_active"] <= 6
    assert stats["hdmole_tau"] == pytest.approx(0.5 / 6)  # tau_max * sigmoid(0)
    assert "hdmole_active/layers.1.q_proj" in stats
    use = [stats[f"hdmole_use_e{i}"] for i in range(6)]  # each expert's mean weight, over the layers
    assert "hdmole_use_e6" not in stats and float(sum(use)) == pytest.approx(1.0, abs=1e-5)
    assert all(u.dim() == 0 for u in use)  # scalars, as ESPnet's reporter needs
    aux = espnet_hdmole.hdmole_aux_loss(model)
    assert aux.requires_grad and aux.item() == pytest.approx(stats["hdmole_lb"].item())
