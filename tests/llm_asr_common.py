"""What the LLM-based ASR model's tests share: the tiny data set and LLM (fixture ``work``),
reading Kaldi files, and a collated batch through the task's preprocessor."""
import kaldiio
import numpy as np
import pytest

from tiny import ACCENTS, TRANSCRIPTS, make_feats_set, make_llm_dir

from espnet_hdmole.tasks.llm_asr import LLMASRTask


def read_kaldi(path):
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split(" ", 1) for line in f if line.strip())


def task_batch(args, data, train=True, n=None):
    """(utterance ids, collated batch) of the tiny data set through the task's preprocessor."""
    pre = LLMASRTask.build_preprocess_fn(args, train=train)
    feats = dict(kaldiio.load_scp(str(data / "feats.scp")))
    text = read_kaldi(data / "text")
    items = [(u, pre(u, {"speech": np.asarray(feats[u]), "text": text[u]})) for u in sorted(feats)[:n]]
    return LLMASRTask.build_collate_fn(None, True)(items)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("llmasr")
    llm = make_llm_dir(w / "llm", "".join(TRANSCRIPTS) + "转写")
    data = make_feats_set(w / "data", TRANSCRIPTS, ACCENTS * 2, separable=True)
    return w, llm, data
