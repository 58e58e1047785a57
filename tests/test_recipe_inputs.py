"""The recipe's checks of what it is given (options, YAMLs, system names, directories): each bad
input is refused with one error line, before any stage changes the tiny recipe's outputs (the
``recipe`` fixture of conftest.py, shared with tests/test_recipe.py); and its messages name only
options that exist."""
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recipe_common import RECIPE, run_fails  # noqa: E402 (the recipe fixture: conftest.py)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (tools/install.sh installs it as root)")


@pytest.mark.parametrize("args, message", [
    (["--stage", "7"], "--stage must be a stage number from 1 to 6, not '7'"),
    (["--stage", "abc"], "--stage must be a stage number from 1 to 6, not 'abc'"),
    (["--stage", "4", "--stop_stage", "2"], "--stage 4 comes after --stop_stage 2: no stage would run"),
    (["--train_seeds", "1 x"], "--train_seeds must be non-negative integers, not 'x'"),
    (["--train_seeds", "0"], "--train_seeds '0' repeats seed 0"),
    (["--train_seeds", "1 2 1"], "--train_seeds '1 2 1' repeats seed 1"),
    (["--train_seeds", "01"], "--train_seeds: write '01' as 1"),
    (["--ngram_weight", "x"], "--ngram_weight must be a non-negative number, not 'x'"),
    (["--ngram_order", "-1"], "--ngram_order must be a non-negative integer, not '-1'"),
    (["--reports", "no"], "--reports must be true or false, not 'no'"),
])
def test_stage_options_are_checked(tmp_path, args, message):
    """Case 6: these exited 0 and did nothing."""
    assert message in run_fails(args, tmp_path)


def test_messages_name_only_options_that_exist():
    """Case 9: stage 2 told users to 'pass --overwrite true', which hdmole.sh does not have."""
    text = (RECIPE / "hdmole.sh").read_text()
    settings = text[text.index("# ---------------------------------------------------------------- settings"):
                    text.index("# ---------------------------------------------------------------- option parsing")]
    declared = set(re.findall(r"^([a-z_]+)=", settings, re.M))
    sourced = "".join(f.read_text() for f in sorted((RECIPE / "local").glob("recipe_*.sh")))  # its stage files
    messages = [m for line in (text + sourced).splitlines() for m in re.findall(r'\b(?:die|log) "(.*)', line)]
    said = {o for m in messages for o in re.findall(r"--([a-z_]+)\b", m)}
    assert said and said <= declared, sorted(said - declared)


def test_a_second_run_into_the_same_exp_dir_is_refused(recipe):
    """Case 8: two stage-6 runs into one exp dir crashed on a .tmp file or deleted each other's decodings."""
    import fcntl

    tmp, _, _ = recipe
    with open(tmp / "exp" / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        err = run_fails(["--stage", "6", "--stop_stage", "6"], tmp)
    assert f"{tmp / 'exp'} is in use by another run" in err and "use another --exp_dir" in err


def test_a_missing_llm_dir_is_one_error_line(recipe):
    """Case 7: a missing --llm_dir ended in a traceback."""
    tmp, _, _ = recipe
    err = run_fails(["--stage", "3", "--stop_stage", "3", "--llm_dir", str(tmp / "nope")], tmp)
    assert f"--llm_dir: LLM directory '{tmp / 'nope'}' does not exist" in err
    err = run_fails(["--stage", "5", "--stop_stage", "5", "--llm_dir", str(tmp / "nope")], tmp)
    assert f"the LLM directory {tmp / 'nope'} does not exist" in err


def test_a_broken_yaml_is_one_error_line_naming_its_line_and_nothing_trains(recipe, tmp_path):
    """A fine-tuning YAML that does not parse: stage 5's job ignored the merge's failure (set -e does
    not hold in run_marked's subshell), trained the previous merged config and marked it done."""
    tmp, _, _ = recipe
    cfg = tmp_path / "finetune_lora.yaml"
    cfg.write_text((RECIPE / "conf" / "finetune_lora.yaml").read_text() + "optim_conf: {lr: [0.004\n")
    before = sorted(p.name for p in (tmp / "exp").iterdir())
    err = run_fails(["--stage", "5", "--stop_stage", "5", "--train_configs", str(cfg)], tmp)
    assert re.search(rf"ERROR: {re.escape(str(cfg))}:\d+:\d+: not valid YAML", err), err
    assert sorted(p.name for p in (tmp / "exp").iterdir()) == before  # nothing moved aside, nothing trained


def test_a_system_may_not_train_into_another_ones_dir(recipe, tmp_path):
    """A system is named after its YAML: conf/finetune_llm.yaml moved the stage-3 LLM aside and trained
    into exp/llm; two YAMLs of one name trained into one dir at once."""
    tmp, _, _ = recipe
    text = (RECIPE / "conf" / "finetune_lora.yaml").read_text()
    (tmp_path / "a").mkdir()
    for f in (tmp_path / "finetune_llm.yaml", tmp_path / "finetune_lora.yaml", tmp_path / "a" / "finetune_lora.yaml"):
        f.write_text(text)
    err = run_fails(["--stage", "5", "--stop_stage", "5", "--train_configs", str(tmp_path / "finetune_llm.yaml")], tmp)
    assert f"names the system 'llm' (after its file name), but {tmp / 'exp' / 'llm'} holds the recipe's own llm" in err
    err = run_fails(["--stage", "5", "--stop_stage", "5", "--train_configs",
                     f"{tmp_path / 'finetune_lora.yaml'} {tmp_path / 'a' / 'finetune_lora.yaml'}"], tmp)
    assert "both name the system 'lora'" in err
    err = run_fails(["--stage", "3", "--stop_stage", "3", "--llm_conf", str(tmp_path / "nope.yaml")], tmp)
    assert f"--llm_conf {tmp_path / 'nope.yaml'} does not exist" in err
