"""The mixture's output scale (adapter_conf.output_scale), pinned against ESPnet's own LoRA.

A uniform dense mixture of N rank-r experts (router frozen at zero, no global router) with
output_scale 'lora' must be ESPnet's LoRA adapter of rank N*r with alpha N*alpha (the same alpha
per rank) holding the same A and B: the same output, and after one optimiser step on the same loss
the same output again. With output_scale 'expert' it moves the output at 1/N of that scale.
"""
import copy

import pytest
import torch
from espnet2.layers.create_adapter_fn import create_lora_adapter

from espnet_hdmole.layers.create_hdmole_adapter import create_hdmole_adapter

N, R, ALPHA, D_IN, D_OUT = 4, 2, 3.0, 12, 10


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(D_IN, D_OUT)

    def forward(self, x):
        return self.proj(x)


def pair(output_scale: str):
    """(mixture model, ESPnet LoRA model) on the same base, with the same A and B."""
    torch.manual_seed(0)
    base = Net()
    mix, lora = copy.deepcopy(base), copy.deepcopy(base)
    create_hdmole_adapter(mix, target_modules=["proj"], num_domains=N, experts_per_domain=1, rank=R,
                          alpha=ALPHA, global_router="none", activation="dense", output_scale=output_scale,
                          router_init_std=0.0)  # the router starts at zero: uniform weights 1/N
    create_lora_adapter(lora, rank=N * R, alpha=int(N * ALPHA), target_modules=["proj"])
    lora.train()  # loralib merged B = 0 into the weight in create_lora_adapter's eval(): unmerge it first
    layer, ll = mix.proj, lora.proj
    assert ll.scaling == pytest.approx(ALPHA / R)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.3)
        ll.lora_A.copy_(layer.lora_A.reshape(N * R, D_IN))
        ll.lora_B.copy_(layer.lora_B.reshape(D_OUT, N * R))
    assert not layer.router.weight.any() and not layer.router.bias.any()
    layer.router.weight.requires_grad_(False)  # and frozen there
    layer.router.bias.requires_grad_(False)
    for name, p in lora.named_parameters():  # ESPnet's create_lora_adapter does not freeze the base
        p.requires_grad_("lora_" in name)
    return mix, lora


def adam_step(model, x, target):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    loss = ((model(x) - target) ** 2).mean()
    loss.backward()
    opt.step()
    return model(x).detach()


def test_a_uniform_mixture_at_lora_scale_is_espnets_lora_of_rank_n_r():
    mix, lora = pair("lora")
    x, target = torch.randn(3, 5, D_IN), torch.randn(3, 5, D_OUT)
    torch.testing.assert_close(mix(x), lora(x), rtol=1e-6, atol=1e-6)
    # the same trainable parameters (A and B; the base is frozen in both)
    assert sum(p.numel() for p in mix.parameters() if p.requires_grad) == N * R * (D_IN + D_OUT)
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == N * R * (D_IN + D_OUT)
    before = lora(x).detach()
    after_mix, after_lora = adam_step(mix, x, target), adam_step(lora, x, target)
    assert (after_lora - before).abs().max() > 1e-3  # the step moved the output
    torch.testing.assert_close(after_mix, after_lora, rtol=1e-5, atol=1e-6)


def test_at_expert_scale_the_same_mixture_moves_the_output_at_1_over_n():
    mix, lora = pair("expert")
    x = torch.randn(3, 5, D_IN)
    base = torch.nn.functional.linear(x, mix.proj.weight, mix.proj.bias)
    torch.testing.assert_close(mix(x) - base, (lora(x) - base) / N, rtol=1e-5, atol=1e-6)
