"""espnet_hdmole.bin.llm_asr_train's --model_info_args: when the trained system's model info is
written after training, and when not (ESPnet's statistics pass, other nodes in spawn mode)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tiny import ACCENTS, train_args  # noqa: E402

from espnet_hdmole.bin import llm_asr_train, model_info  # noqa: E402
from espnet_hdmole.tasks.llm_asr import LLMASRTask  # noqa: E402
from llm_asr_common import work  # noqa: E402,F401  (work: the shared fixture)


def info_opts(w, data):
    (w / "accents.txt").write_text("\n".join(dict.fromkeys(ACCENTS)) + "\n", encoding="utf-8")
    return ["--model_info_args", f"--model valid.acc.ave.pth --data {data} --accents {w / 'accents.txt'}"]


def test_model_info_is_skipped_when_collecting_stats(work):
    """--collect_stats trains nothing: no model info (it would fail on the missing checkpoint)."""
    w, llm, data = work
    out = w / "exp_stats"
    llm_asr_train.main(train_args(out, data, llm, epochs=1, iters=2) + ["--collect_stats", "true"] + info_opts(w, data))
    assert (out / "train" / "feats_stats.npz").is_file()  # the statistics were collected
    assert not (out / "params.json").exists()


def fake_spawn_training(node_rank, calls, monkeypatch):
    """LLMASRTask.main as ESPnet's spawn mode leaves the parent's namespace on node node_rank."""
    def main(args):
        args.distributed, args.multiprocessing_distributed, args.dist_rank = True, True, node_rank
    monkeypatch.setattr(LLMASRTask, "main", main)
    monkeypatch.setattr(model_info, "main", lambda argv: calls.append(argv))


def test_in_spawn_mode_only_the_first_nodes_parent_writes_the_model_info(work, monkeypatch):
    w, llm, data = work
    for node, expected in ((1, 0), (0, 1)):
        calls = []
        fake_spawn_training(node, calls, monkeypatch)
        llm_asr_train.main(train_args(w / f"exp_node{node}", data, llm, epochs=1, iters=1) + info_opts(w, data))
        assert len(calls) == expected, (node, calls)
        if calls:
            assert calls[0][:2] == ["--exp", str(w / "exp_node0")]
