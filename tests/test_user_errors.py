"""User errors are one line that names the key or file (issue 10, case 7): bad adapter_conf
values, through the adapter and through the training command line."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import ACCENTS, TRANSCRIPTS, make_feats_set, make_llm_dir, train_args  # noqa: E402

from espnet_hdmole import create_hdmole_adapter  # noqa: E402
from espnet_hdmole.errors import UserError, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NINE = dict(num_domains=9, experts_per_domain=1)


def adapt(**conf):
    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(4, 4))
    return create_hdmole_adapter(model, target_modules=["proj"], **conf)


@pytest.mark.parametrize("conf, message", [
    (dict(rank=0), "adapter_conf.rank must be an integer >= 1, got 0"),
    (dict(NINE, activation="topk", top_k=20),
     "adapter_conf.top_k must be an integer from 1 to 9 (the number of experts"),
    (dict(temperature=-1.0), "adapter_conf.temperature must be a number > 0, got -1.0"),
    (dict(activation="relu"), "adapter_conf.activation must be one of ['threshold', 'token_threshold', 'topk', 'dense'], got 'relu'"),
    (dict(num_domain=9), "unknown key(s) in adapter_conf for adapter 'hdmole': ['num_domain']"),
    (dict(dropout_rate=1.5), "adapter_conf.dropout_rate must be a number in [0, 1), got 1.5"),
    (dict(NINE, tau_max=0.5), "adapter_conf.tau_max must be a number in (0, 1/9]"),
    (dict(rank="4"), "adapter_conf.rank must be an integer >= 1, got '4'"),
])
def test_bad_adapter_conf_names_the_key(conf, message):
    with pytest.raises(UserError) as e:
        adapt(**conf)
    assert message in str(e.value)


def test_run_cli_prints_one_line_and_the_traceback_only_when_verbose(capsys, monkeypatch):
    monkeypatch.delenv("HDMOLE_VERBOSE", raising=False)

    def main(argv):
        raise UserError("conf/x.yaml: adapter_conf.rank must be an integer >= 1, got 0")

    assert run_cli(main, []) == 1
    assert capsys.readouterr().err == "ERROR: conf/x.yaml: adapter_conf.rank must be an integer >= 1, got 0\n"
    assert run_cli(main, ["--verbose", "true"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert run_cli(main, ["--verbose", "false"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv("HDMOLE_VERBOSE", "1")
    assert run_cli(main, []) == 1
    assert "Traceback" in capsys.readouterr().err


def test_training_with_a_bad_adapter_conf_is_one_error_line(tmp_path):
    llm = make_llm_dir(tmp_path / "llm", "".join(TRANSCRIPTS) + "转写")
    data = make_feats_set(tmp_path / "data", TRANSCRIPTS, ACCENTS * 2)
    args = train_args(tmp_path / "exp", data, llm, epochs=1, iters=1, extra=[
        "--use_adapter", "true", "--adapter", "hdmole", "--save_strategy", "required_grad_only",
        "--adapter_conf", "target_modules=['linear1']", "--adapter_conf", "num_domain=3"])
    p = subprocess.run([sys.executable, "-m", "espnet_hdmole.bin.llm_asr_train", *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1].startswith("ERROR: unknown key(s) in adapter_conf for adapter 'hdmole': "
                                                        "['num_domain']")
