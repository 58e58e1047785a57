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


def test_a_config_sets_the_options_and_names_a_key_it_does_not_know(tmp_path):
    """hdmole.sh's --llm_conf is passed as --config: its keys are the options (the command line wins),
    and a key that is no option is one ERROR line naming the YAML (it was argparse's 'unrecognized
    arguments' in a log tail); a file that is no YAML mapping names its line."""
    import pytest

    text = tmp_path / "t.text"
    text.write_text("".join(f"u{i} {s}\n" for i, s in enumerate(SENTENCES)), encoding="utf-8")
    conf = tmp_path / "llm.yaml"
    conf.write_text("hidden_size: 16\nnum_layers: 1\nnum_heads: 2\nnum_kv_heads: 1\nepochs: 1\nbatch_size: 3\n")
    out = tmp_path / "llm"
    assert pretrain_llm.main(["--train_text", str(text), "--out_dir", str(out), "--config", str(conf),
                              "--threads", "1", "--num_layers", "2"]) == 0
    import json
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 16 and cfg["num_hidden_layers"] == 2  # the YAML's, and the command line's
    conf.write_text("hidden_size: 16\nnum_layer: 1\n")
    with pytest.raises(SystemExit, match=rf"ERROR: {conf}: 'num_layer' is no option of local/pretrain_llm.py"):
        pretrain_llm.main(["--train_text", str(text), "--out_dir", str(tmp_path / "x"), "--config", str(conf)])
    conf.write_text("hidden_size: 16\nlr: [0.1\n")
    with pytest.raises(SystemExit, match=rf"ERROR: {conf}:3:1: not valid YAML: .* starts at line 2"):
        pretrain_llm.main(["--train_text", str(text), "--out_dir", str(tmp_path / "x"), "--config", str(conf)])
    conf.write_text("hidden_size: 16\nepochs: 4.0\n")  # a float where the option takes an int
    with pytest.raises(SystemExit, match=rf"ERROR: {conf}: epochs: 4.0 is no int"):
        pretrain_llm.main(["--train_text", str(text), "--out_dir", str(tmp_path / "x"), "--config", str(conf)])
    conf.write_text("- 1\n")
    with pytest.raises(SystemExit, match=rf"ERROR: {conf}: expected a mapping of settings"):
        pretrain_llm.main(["--train_text", str(text), "--out_dir", str(tmp_path / "x"), "--config", str(conf)])
