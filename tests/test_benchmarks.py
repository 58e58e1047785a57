"""The benchmark script of the fine-tuning systems runs on the tiny preset and reports what it
promises; its synthetic CTC path gives the LLM one position per 4 encoder frames."""
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from llm_asr_systems import PRESETS, build, synthetic_ctc_path, system_spec  # noqa: E402

from espnet_hdmole.asr.pinyin_units import PinyinUnits  # noqa: E402
from espnet_hdmole.layers.create_hdmole_adapter import hdmole_layers  # noqa: E402


def test_synthetic_ctc_path_is_blank_initial_final_final():
    path = synthetic_ctc_path(torch.zeros(2, 9, 4))
    n_ini = len(PinyinUnits.initials())
    assert path.shape == (2, 9) and torch.equal(path[0], path[1])
    assert path[0, 0] == 0 and path[0, 4] == 0 and path[0, 8] == 0
    assert 1 <= int(path[0, 1]) <= n_ini and 1 <= int(path[0, 5]) <= n_ini  # initials
    assert path[0, 2] == path[0, 3] and int(path[0, 2]) > n_ini  # one final over two frames
    assert path[0, 1] != path[0, 5] and path[0, 2] != path[0, 6]  # syllables differ


def test_bench_tiny_reports_every_system(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_llm_asr.py"), "--preset", "tiny", "--steps", "2",
           "--pool", "2", "--beams", "1", "--threads", "1", "--systems", "lora", "hdmole", "--repeats", "2",
           "--decode_passes", "3", "--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| forward (s) | backward (s) | update (s) |" in p.stdout
    assert "| hdmole |" in p.stdout and "hdmole/lora step time (median of 2 runs):" in p.stdout
    assert "hdmole/lora RTF greedy (median of 2 runs):" in p.stdout
    res = json.loads(out.read_text())
    rows = {r["system"]: r for r in res["rows"]}
    assert set(rows) == {"lora", "hdmole"}
    for r in rows.values():
        assert r["step_s"] > 0 and r["rtf_beam1"] > 0 and r["max_rss_mb"] > 0 and r["trainable"] > 0
        assert r["repeats"] == 2 and r["step_s"] == pytest.approx(sum(r["step_s_runs"]) / 2)  # the median of 2
        # a step is its three phases: forward, backward (with zero_grad), update (with clipping)
        phases = r["phases_all"]
        assert len(phases) == 2 and all(len(ph) == 3 and min(ph) > 0 for ph in phases)
        assert [sum(ph) for ph in phases] == pytest.approx(r["step_s_all"])
        assert r["forward_s"] > r["update_s"] and r["forward_s"] < r["step_s"] and r["backward_s"] < r["step_s"]
        # each run's RTF is the median of its 3 timed decoding passes; the row's, the median of the runs'
        passes = r["rtf_beam1_passes"]
        assert len(passes) == 2 and all(len(p) == 3 for p in passes)
        assert r["rtf_beam1"] == pytest.approx(sum(sorted(p)[1] for p in passes) / 2)
        # the untimed pass filled the encoder cache with every utterance of the pool
        assert r["cached_utts"] == res["config"]["pool"] * res["config"]["batch"]
    assert rows["hdmole"]["adapter_conf"]["num_domains"] == 9
    # after each target, the ratio of each run: the systems' figures of the same run, paired
    hd, lo = rows["hdmole"], rows["lora"]
    steps = [f"{x / y:.2f}" for x, y in zip(hd["step_s_runs"], lo["step_s_runs"])]
    assert f"; run by run: {', '.join(steps)}" in p.stdout.split("hdmole/lora step time")[1].splitlines()[0]
    rtfs = [f"{sorted(x)[1] / sorted(y)[1]:.2f}" for x, y in zip(hd["rtf_beam1_passes"], lo["rtf_beam1_passes"])]
    assert f"; run by run: {', '.join(rtfs)}" in p.stdout.split("hdmole/lora RTF greedy")[1].splitlines()[0]


@pytest.mark.parametrize("domains, experts", [(1, 1), (3, 2)])
def test_sweep_points_build(tmp_path, domains, experts):
    """Every size the --sweep asks for builds: one domain has no global router and no accent head
    (which needs two), several domains keep the predicted router of finetune_hdmole.yaml."""
    spec = system_spec("hdmole", domains=domains, experts=experts)
    model, rep, _ = build(PRESETS["tiny"], spec, tmp_path)
    layers = [m for _, m in hdmole_layers(model)]
    assert layers and all(m.num_experts == domains * experts for m in layers)
    assert all(m.global_router == ("none" if domains == 1 else "predicted") for m in layers)
    assert (model.accent_head is None) == (domains == 1) and rep["trainable"] > 0


def test_bench_interleaved_pairs_the_systems_round_by_round(tmp_path):
    """--interleave: every system in one process, timed round by round; each target line gives
    the median of the rounds' paired ratios, its interval and each run's median ratio."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_llm_asr.py"), "--preset", "tiny", "--steps", "4",
           "--block", "2", "--pool", "2", "--beams", "1", "--threads", "1", "--systems", "lora", "hdmole",
           "--repeats", "2", "--decode_passes", "3", "--interleave", "--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    hd, lo = rows["hdmole"], rows["lora"]
    for r in (hd, lo):
        # 2 runs of 4 // 2 rounds, each round the mean of its 2 timed steps; 3 decoding rounds a run
        assert len(r["step_s_rounds"]) == 2 and all(len(run) == 2 for run in r["step_s_rounds"])
        assert len(r["phases_all"]) == 4 and len(r["rtf_beam1_passes"][0]) == 3
        assert r.get("max_rss_mb") is None and r["cached_utts"] == 2 * 4
    line = p.stdout.split("hdmole/lora step time (interleaved, 2 run(s) x 2 rounds): ")[1].splitlines()[0]
    ratios = [x / y for a, b in zip(hd["step_s_rounds"], lo["step_s_rounds"]) for x, y in zip(a, b)]
    assert line.startswith(f"{statistics.median(ratios):.3f} [95% CI ")
    assert line.endswith(", ".join(f"{statistics.median(ratios[i:i + 2]):.3f}" for i in (0, 2)))
    rtf = [x / y for a, b in zip(hd["rtf_beam1_passes"], lo["rtf_beam1_passes"]) for x, y in zip(a, b)]
    assert f"RTF greedy (interleaved, 2 run(s) x 3 rounds): {statistics.median(rtf):.3f} [" in p.stdout


def test_paired_ratio_interval_and_verdict():
    from timed_system import paired_ratio, target_verdict

    same = paired_ratio([[1.1, 2.2, 3.3]] * 2, [[1.0, 2.0, 3.0]] * 2)
    assert same["median"] == pytest.approx(1.1) and same["ci"] == pytest.approx((1.1, 1.1))
    assert same["runs"] == pytest.approx([1.1, 1.1])
    # a second run whose ratios sit higher widens the interval across both runs' levels
    two = paired_ratio([[1.0, 1.02, 0.98, 1.01], [1.3, 1.32, 1.28, 1.31]], [[1.0] * 4, [1.0] * 4])
    assert two["ci"][0] <= 1.01 and two["ci"][1] >= 1.28 and two["runs"] == pytest.approx([1.005, 1.305])
    assert target_verdict((1.05, 1.15), 1.2) == "met"
    assert target_verdict((1.21, 1.3), 1.2) == "not met"
    assert target_verdict((1.15, 1.25), 1.2).startswith("undecided")
    one = paired_ratio([[1.1]], [[1.0]])  # a single paired figure has no interval, so no verdict
    assert one["ci"] is None and target_verdict(one["ci"], 1.2).startswith("no verdict")


def test_bench_interleaved_steps_come_in_whole_rounds():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_llm_asr.py"), "--interleave", "--steps", "5", "--block", "3"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "5 is no multiple of 3" in p.stderr


def test_routing_free_control_is_a_uniform_mixture_and_leaves_other_layers_alone():
    """The bench's control (routing_free_control.py): each layer adds scaling / N * x A^T B^T, with
    autograd's gradients for x, A and B and none for the router; the same through a group of q/k/v
    and without autograd; a layer not switched still routes."""
    import routing_free_control
    from test_hdmole_layer import make_layer
    from test_shared_input import adapted

    from espnet_hdmole import domain_posterior

    torch.manual_seed(0)
    real, ctrl = make_layer(num_domains=3, experts_per_domain=2, rank=2), make_layer(num_domains=3, experts_per_domain=2, rank=2)
    x = torch.randn(2, 5, 12, requires_grad=True)
    g = torch.softmax(torch.randn(2, 3), -1)
    with domain_posterior(g):
        before = real(x).detach()
        assert routing_free_control.install(torch.nn.Sequential(ctrl)) == 1
        got = ctrl(x)
        torch.testing.assert_close(real(x), before)  # the real layer, in the same process, unchanged
        n, r = ctrl.num_experts, ctrl.rank
        a, b = ctrl.lora_A.reshape(n * r, -1), ctrl.lora_B.reshape(-1, n * r)
        want = torch.nn.functional.linear(x, ctrl.weight, ctrl.bias) + ctrl.scaling / n * (x @ a.t()) @ b.t()
        torch.testing.assert_close(got, want)
        target = torch.randn_like(got)
        wrt = [x, ctrl.lora_A, ctrl.lora_B, ctrl.router.weight]
        gg = torch.autograd.grad((got * target).sum(), wrt)
        gw = torch.autograd.grad((want * target).sum(), wrt[:3])
        for name, u, v in zip(["x", "A", "B"], gg, gw):
            torch.testing.assert_close(u, v, msg=name)
        assert gg[2].abs().sum() > 0 and torch.all(gg[3] == 0)
        with torch.no_grad():  # the decoding path (no autograd node)
            torch.testing.assert_close(ctrl(x), want.detach())

    # q/k/v and gate/up as groups: the same as each layer alone
    ids = torch.randint(0, 50, (2, 6))
    g = torch.softmax(torch.randn(2, 3), -1)
    outs = []
    for groups in (None, []):
        model = adapted(groups)
        routing_free_control.install(model)
        with domain_posterior(g):
            outs.append(model(ids).logits)
    torch.testing.assert_close(outs[0], outs[1])
    with pytest.raises(ValueError, match="no HDMoLE layer"):
        routing_free_control.install(torch.nn.Linear(2, 2))


def test_routing_free_control_runs_the_matmuls_of_the_real_mixture():
    """The control is only a floor while it does the real node's matmul work: the same matmuls, of
    the same shapes, forward and backward, in a model with q/k/v and gate/up groups (fails when
    group_mixture.py's matmuls change and the control does not follow)."""
    from collections import Counter

    from test_shared_input import adapted
    from torch.utils._python_dispatch import TorchDispatchMode

    import routing_free_control
    from espnet_hdmole import domain_posterior

    class Matmuls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("mm", "addmm", "bmm", "baddbmm", "matmul"):
                self.seen[(func.__name__, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))] += 1
            return func(*args, **(kwargs or {}))

    ids = torch.randint(0, 50, (2, 6))
    g = torch.softmax(torch.randn(2, 3), -1)
    seen = []
    for control in (False, True):
        model = adapted(None).train()
        if control:
            routing_free_control.install(model)
        with domain_posterior(g), Matmuls() as mode:
            model(ids).logits.sum().backward()
        seen.append(mode.seen)
    assert sum(seen[0].values()) > 30 and seen[0] == seen[1]


def test_routing_free_control_with_dropout_on_the_experts_input():
    """With expert dropout the routers read x and the experts the dropped x: the control's output
    and gradients are those of scaling / N * drop(x) A^T B^T, the routers' weight, bias and
    threshold get zero gradients."""
    import routing_free_control
    from test_hdmole_layer import make_layer

    from espnet_hdmole import domain_posterior

    torch.manual_seed(0)
    layer = make_layer(num_domains=3, experts_per_domain=2, rank=2, dropout_rate=0.3).train()
    routing_free_control.install(torch.nn.Sequential(layer))
    x = torch.randn(2, 5, 12, requires_grad=True)
    g = torch.softmax(torch.randn(2, 3), -1)
    n, r = layer.num_experts, layer.rank
    a, b = layer.lora_A.reshape(n * r, -1), layer.lora_B.reshape(-1, n * r)
    with domain_posterior(g):
        torch.manual_seed(5)
        got = layer(x)
    torch.manual_seed(5)
    xd = layer.lora_dropout(x.reshape(-1, 12)).view(x.shape)  # the same mask: the same draw
    assert not torch.equal(xd, x)
    want = torch.nn.functional.linear(x, layer.weight, layer.bias) + layer.scaling / n * (xd @ a.t()) @ b.t()
    torch.testing.assert_close(got, want)
    target = torch.randn_like(got)
    wrt = [x, layer.lora_A, layer.lora_B]
    for name, u, v in zip(["x", "A", "B"], torch.autograd.grad((got * target).sum(), wrt, retain_graph=True),
                          torch.autograd.grad((want * target).sum(), wrt)):
        torch.testing.assert_close(u, v, msg=name)
    zero = torch.autograd.grad((got * target).sum(), [layer.router.weight, layer.router.bias, layer.threshold])
    assert all(torch.all(z == 0) for z in zero)


def _can_build_extensions() -> bool:
    from torch.utils.cpp_extension import is_ninja_available

    return is_ninja_available() and shutil.which("c++") is not None


def _graph_nodes(fn) -> set:
    """The names of the autograd nodes behind ``fn``."""
    seen, todo = set(), [fn]
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(nxt for nxt, _ in f.next_functions)
    return {type(f).__name__ for f in seen}


@pytest.mark.skipif(not _can_build_extensions(), reason="the native control compiles C++ (needs c++ and ninja)")
def test_native_group_control_trains_hdmole_bit_for_bit():
    """The bench's native node (native_group_control.cpp) runs the Python node's operations in the
    same order: a training forward and backward through a tiny Qwen2 with q/k/v and gate/up groups
    and two experts per domain give the same logits, gradients and routing statistics, bit for bit
    (fails when either side's arithmetic changes alone); a model not switched keeps the Python
    node; settings the node does not implement are refused, naming the layer."""
    import native_group_control
    from test_shared_input import adapted, run

    from espnet_hdmole import domain_posterior
    from espnet_hdmole.layers import shared_input

    ids = torch.tensor([[5, 9, 3, 7, 2, 0, 0], [4, 8, 6, 1, 3, 9, 2]])
    g = torch.softmax(torch.randn(2, 3, generator=torch.Generator().manual_seed(3)), -1)
    got = []
    for native in (False, True):
        model = adapted(None).train()
        with torch.no_grad():  # thresholds of their own, so that the active sets differ by layer
            for k, (_, layer) in enumerate(hdmole_layers(model)):
                layer.threshold.fill_(0.3 * (k % 5) - 0.6)
        if native:
            python_node = adapted(None).train()
            before = run(python_node, ids, g)
            assert native_group_control.install(model) == len(list(hdmole_layers(model)))
            assert shared_input.GroupMixture is not native_group_control.NativeGroupMixture
        got.append(run(model, ids, g))
        with domain_posterior(g):  # which node the groups ran
            nodes = _graph_nodes(model(input_ids=ids).logits.grad_fn)
        assert ("NativeGroupMixtureBackward" in nodes, "GroupMixtureBackward" in nodes) == (native, not native)
    (logits0, grads0, stats0), (logits1, grads1, stats1) = got
    assert torch.equal(logits0, logits1)
    assert grads0.keys() == grads1.keys() and len(grads0) > 40
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name
    assert any("threshold" in name for name in grads0) and any("router" in name for name in grads0)
    assert stats0.keys() == stats1.keys() and stats0
    for name in stats0:
        assert torch.equal(torch.as_tensor(stats0[name]), torch.as_tensor(stats1[name])), name
    # a model that was not switched, in the same process: still the Python node, the same figures
    after = run(python_node, ids, g)
    assert torch.equal(before[0], after[0]) and all(torch.equal(before[1][k], after[1][k]) for k in before[1])
    with domain_posterior(g):
        nodes = _graph_nodes(python_node(input_ids=ids).logits.grad_fn)
    assert "GroupMixtureBackward" in nodes and "NativeGroupMixtureBackward" not in nodes
    with pytest.raises(ValueError, match=r"q_proj.*'activation': 'topk'"):
        native_group_control.install(adapted(None, activation="topk", top_k=2))
    with pytest.raises(ValueError, match="no HDMoLE layer"):
        native_group_control.install(torch.nn.Linear(2, 2))


@pytest.mark.skipif(not _can_build_extensions(), reason="the native control compiles C++ (needs c++ and ninja)")
@pytest.mark.parametrize("with_base", [False, True], ids=["delta", "with_base"])
def test_native_group_control_where_a_member_gets_no_gradient(with_base):
    """A group of q/k/v whose k output is left out of the loss: the native node's backward takes
    no gradient for it (None), as the Python node does, with the same gradients bit for bit (the
    Python node zeroes that member's part and gives its B no gradient); a gradient of x and of
    every other parameter arrives. ``with_base``: the nodes' outputs include the base linears."""
    import native_group_control
    from test_shared_input import adapted

    from espnet_hdmole.layers.group_mixture import GroupMixture, layer_parameters

    model = adapted(None).train()
    native_group_control.install(model)
    attn = model.model.layers[0].self_attn
    layers = [attn.q_proj, attn.k_proj, attn.v_proj]
    params = [p for m in layers for p in layer_parameters(m)]
    g = torch.softmax(torch.randn(2, 3), -1)
    x0 = torch.randn(2 * 7, layers[0].in_features)
    got = []
    for node in (GroupMixture, native_group_control.NativeGroupMixture):
        x = x0.clone().requires_grad_()
        outs = node.apply(layers, x, None, g, None, False, with_base, *params)
        wrt = [x] + params
        grads = torch.autograd.grad(outs[0].pow(2).sum() + outs[2].sum(), wrt, allow_unused=True)
        got.append(grads)
    k_b = 5 + 3  # the k layer's B: the fourth of its 5 parameters (router weight, bias, A, B, theta)
    assert all(k[1 + k_b] is None or not k[1 + k_b].any() for k in got)  # nothing reached k's B
    for i, (u, v) in enumerate(zip(*got)):
        assert (u is None) == (v is None) and (u is None or torch.equal(u, v)), i
    assert got[1][0].abs().sum() > 0 and got[1][1 + 2 * 5 + 3].abs().sum() > 0  # x, and v's B


@pytest.mark.skipif(not _can_build_extensions(), reason="the native control compiles C++ (needs c++ and ninja)")
def test_controls_switched_in_any_order_keep_to_their_own_models():
    """Both controls in one process, installed in turn on different models (native, routing-free,
    native again): each model runs the node it was switched to, and a model switched to neither the
    real node, whatever the order (control_dispatch.py: no control chains onto another)."""
    import native_group_control
    import routing_free_control
    from test_shared_input import adapted

    from espnet_hdmole import domain_posterior

    models = [adapted(None).train() for _ in range(4)]
    native_group_control.install(models[0])
    routing_free_control.install(models[1])
    native_group_control.install(models[2])
    ids = torch.randint(1, 50, (2, 6))
    g = torch.softmax(torch.randn(2, 3), -1)
    want = ["NativeGroupMixtureBackward", "RoutingFreeBackward", "NativeGroupMixtureBackward", "GroupMixtureBackward"]
    kinds = set(want)
    for model, node in zip(models, want):
        with domain_posterior(g):
            nodes = _graph_nodes(model(input_ids=ids).logits.grad_fn)
        assert nodes & kinds == {node}
