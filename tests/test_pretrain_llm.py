"""Stage 3's LLM pre-training (local/pretrain_llm.py): the model depends on the text and the seed,
not on the utterance ids or the order of the files."""
import sys
from pathlib import Path

from safetensors.torch import load_file

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1"
sys.path.insert(0, str(RECIPE / "local"))
import pretrain_llm  # noqa: E402

SENTENCES = ["今天天气很好", "早上好", "你好世界", "天气好", "今天好", "早上天气很好", "世界你好", "很好"]
TINY = ["--hidden_size", "16", "--num_layers", "1", "--num_heads", "2", "--num_kv_heads", "1", "--epochs", "2",
        "--batch_size", "3", "--threads", "1"]


def pretrain(tmp, name, files, seed=0):
    """Writes each {uid: text} dict of ``files`` as a Kaldi text file, pre-trains on them and
    returns the model's weights."""
    paths = []
    for i, table in enumerate(files):
        p = tmp / f"{name}.{i}.text"
        p.write_text("".join(f"{u} {t}\n" for u, t in table.items()), encoding="utf-8")
        paths.append(str(p))
    out = tmp / name
    assert pretrain_llm.main(["--train_text", *paths, "--out_dir", str(out), "--seed", str(seed), *TINY]) == 0
    return load_file(str(out / "model.safetensors"))


def same(a, b):
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_model_does_not_depend_on_utterance_ids_or_file_order(tmp_path):
    first = {f"a{i:02d}": s for i, s in enumerate(SENTENCES[:5])}
    second = {f"b{i:02d}": s for i, s in enumerate(SENTENCES[5:])}
    ref = pretrain(tmp_path, "ref", [first, second])
    # other ids, which sort the transcripts differently, and the files the other way round
    renamed = {f"z{9 - i:02d}": s for i, s in enumerate(SENTENCES[:5])}
    assert same(ref, pretrain(tmp_path, "renamed", [second, renamed]))
    # a control: another seed gives another model, so the comparison above can fail
    assert not same(ref, pretrain(tmp_path, "seed1", [first, second], seed=1))
