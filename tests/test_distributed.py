"""Training with ESPnet's own distributed mode on 2 CPU processes (gloo), launched by torchrun.

ESPnet 202511 does not spawn CPU workers itself: ``--multiprocessing_distributed true`` spawns
one process per GPU and needs ``--ngpu > 1`` (on CPU it reads ``--dist_world_size`` as the
number of nodes and wants ``--dist_rank``). The supported CPU way is one process per rank from
an external launcher, here PyTorch's own ``python -m torch.distributed.run`` (torchrun): it sets
RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, ESPnet reads them through ``--dist_init_method env://``
(the default) and resolves "distributed" itself; only ``--dist_backend gloo`` is needed.

Evidence that distribution really happened:
- rank 0 logs as ``[host:0/2]`` and both ranks print their command line;
- ESPnet shards every mini-batch over the ranks: rank 0 loads only 3 of the 6 utterances;
- yet the trained weights equal those of a single-process run on all 6 utterances (DDP
  averages the gradients of both shards; the shards hold the same number of target tokens, so
  ESPnet's batch-size-weighted averaging equals the single-process token mean).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

sys.path.insert(0, str(Path(__file__).parent))
from tiny import ACCENTS, TRANSCRIPTS, make_feats_set, make_llm_dir, train_args  # noqa: E402

from espnet_hdmole.tasks.llm_asr import LLMASRTask  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

ITERS = 4


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("dist")
    llm = make_llm_dir(w / "llm", "".join(TRANSCRIPTS) + "转写")
    data = make_feats_set(w / "data", TRANSCRIPTS, ACCENTS * 2)
    # batch_size 6 -> one batch [utt000..utt005]; rank r gets batch[r::2]. Equal token counts per
    # shard make the distributed gradient equal the single-process one exactly.
    assert sum(len(t) for t in TRANSCRIPTS[0::2]) == sum(len(t) for t in TRANSCRIPTS[1::2])
    return w, llm, data


def _clean_env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES"):
        env.pop(k, None)
    return env


def test_torchrun_two_cpu_ranks_match_single_process(work):
    w, llm, data = work
    single, dist = w / "exp_single", w / "exp_dist"
    LLMASRTask.main(cmd=train_args(single, data, llm, epochs=1, iters=ITERS))

    (w / "accents.txt").write_text("\n".join(dict.fromkeys(ACCENTS)) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "espnet_hdmole.bin.llm_asr_train",
           *train_args(dist, data, llm, epochs=1, iters=ITERS), "--dist_backend", "gloo",
           "--model_info_args", f"--model valid.acc.ave.pth --data {data} --accents {w / 'accents.txt'}"]
    p = subprocess.run(cmd, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    (w / "train_dist.log").write_text(log)
    assert p.returncode == 0, log[-4000:]

    # world size 2 in ESPnet's own log prefix (rank 0 only logs; rank 1 is at level ERROR)
    assert re.search(r"^\[[^\]\s]*:0/2\] .*The training was finished at 1 epochs", log, re.M), log[-4000:]
    # both ranks started the ESPnet entry point
    assert len(re.findall(r"llm_asr_train\S* --output_dir", log)) == 2
    # mini-batches were sharded: rank 0 read 3 of the 6 utterances, never all 6
    assert f"only loading 3 keys from {data}/text" in log
    assert f"only loading 6 keys from {data}/text" not in log

    cfg = (dist / "config.yaml").read_text()
    assert re.search(r"^distributed: true$", cfg, re.M) and "dist_backend: gloo" in cfg
    st_d = torch.load(dist / "checkpoint.pth", weights_only=False)["reporter"]["stats"][1]["train"]
    st_s = torch.load(single / "checkpoint.pth", weights_only=False)["reporter"]["stats"][1]["train"]
    assert st_d["total_count"] == st_s["total_count"] == ITERS
    # all-reduced stats over both shards equal the full-batch ones
    assert st_d["loss"] == pytest.approx(st_s["loss"], rel=1e-4)

    # rank 1's gradients were averaged in: rank 0 alone saw only half the data, yet the weights
    # equal the single-process run on all of it
    a = torch.load(single / "1epoch.pth", weights_only=False)
    b = torch.load(dist / "1epoch.pth", weights_only=False)
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff < 1e-4, diff

    # the system's model info was written after training, by rank 0 alone
    assert len(re.findall(r"accent-ID accuracy", log)) == 1, log[-4000:]
    assert json.loads((dist / "params.json").read_text())["trainable"] > 0
    assert "model_info_args" not in cfg  # not a training option

    # the checkpoint written by rank 0 loads as a normal model
    model, _ = LLMASRTask.build_model_from_file(dist / "config.yaml", dist / "valid.acc.ave.pth")
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in b.items() if k in sd)


def test_multiprocessing_distributed_on_cpu_wants_a_node_rank(work, tmp_path, monkeypatch):
    """--multiprocessing_distributed true with --ngpu 0 does not spawn workers: ESPnet takes
    --dist_world_size as the number of nodes (one process each) and asks for each one's rank."""
    w, llm, data = work
    args = train_args(tmp_path / "exp", data, llm, epochs=1, iters=1) + [
        "--multiprocessing_distributed", "true", "--dist_world_size", "2", "--dist_backend", "gloo"]
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="--dist_rank or RANK must be set"):
        LLMASRTask.main(cmd=args)
