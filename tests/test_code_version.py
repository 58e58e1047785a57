"""Results that name their code: the commit recorded with each stage output
(espnet_hdmole/utils/code_version.py, local/code_record.py), gathered into RESULTS.md and checked
against the current code by local/update_readme.py --check."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from espnet_hdmole.utils import code_version

LOCAL = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"
sys.path.insert(0, str(LOCAL))
import code_record  # noqa: E402
import update_readme  # noqa: E402


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def make_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "espnet_hdmole").mkdir(parents=True)
    (repo / "espnet_hdmole" / "layer.py").write_text("x = 1\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_a.py").write_text("")
    git(tmp_path, "init", "-q", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    return repo, git(repo, "rev-parse", "HEAD")


def test_the_record_says_the_commit_and_whether_the_files_results_depend_on_were_committed(tmp_path):
    repo, head = make_repo(tmp_path)
    assert code_version.current(repo) == {"commit": head, "clean": True}
    (repo / "tests" / "test_a.py").write_text("changed\n")  # tests are not what results depend on
    assert code_version.current(repo)["clean"] is True
    (repo / "espnet_hdmole" / "new.py").write_text("")  # an untracked file of the package counts
    no_tracked_change = hashlib.sha256(b"").hexdigest()
    assert code_version.current(repo) == {"commit": head, "clean": False, "changes": no_tracked_change}
    assert code_version.changed_since(head, repo) == ["espnet_hdmole/new.py"]
    assert code_version.changed_since(head, repo, untracked=False) == []
    (repo / "espnet_hdmole" / "new.py").unlink()
    (repo / "espnet_hdmole" / "layer.py").write_text("x = 2\n")
    assert code_version.changed_since(head, repo) == ["espnet_hdmole/layer.py"]
    # the uncommitted changes are named by their digest: the same edit, the same digest
    edited = code_version.current(repo)
    assert edited["clean"] is False and edited["changes"] not in (None, no_tracked_change)
    (repo / "espnet_hdmole" / "layer.py").write_text("x = 3\n")
    assert code_version.current(repo)["changes"] != edited["changes"]
    (repo / "espnet_hdmole" / "layer.py").write_text("x = 2\n")
    assert code_version.current(repo) == edited
    assert code_version.changed_since("0" * 40, repo) is None
    outside = tmp_path / "plain"
    outside.mkdir()
    assert code_version.current(outside) == code_version.UNKNOWN
    assert code_version.label({"commit": head, "clean": False}) == f"{head[:7]} (uncommitted changes)"


def test_outputs_of_another_exp_dir_in_the_recipe_do_not_make_the_code_dirty():
    """`--exp_dir exp_seed2` (or a `--dump_dir dump_<x>`) inside the recipe directory holds generated
    outputs: git ignores them, so the records of a run there are not 'uncommitted changes'."""
    repo = code_version.REPO
    if code_version.current(repo)["commit"] is None:
        pytest.skip("not a git checkout")
    recipe = "egs2/kespeech_hdmole/asr1"
    paths = [f"{recipe}/{d}/lora/config.yaml" for d in ("exp", "exp_seed2", "dump", "dump_fbank")]
    out = subprocess.run(["git", "-C", str(repo), "check-ignore", "--no-index", *paths], capture_output=True, text=True)
    assert out.stdout.split() == paths
    code = subprocess.run(["git", "-C", str(repo), "check-ignore", "--no-index", f"{recipe}/local/stage_marker.py"])
    assert code.returncode == 1  # the recipe's own code is not ignored


def test_stage_outputs_are_gathered_with_their_code_and_stale_runs_left_out(tmp_path):
    exp = tmp_path / "exp"
    a, b, old, aside = exp / "sys_a", exp / "sys_a" / "decode_union", exp / "llm", exp / "sys_b.stale-20260101"
    for d in (a, b, old, aside):
        d.mkdir(parents=True)
    rec = {"commit": "a" * 40, "clean": True}
    (a / ".done").write_text(json.dumps({"format": 1, "inputs": {}, "code": rec}))  # a stage marker
    (b / ".done").write_text("{}")
    (b / code_record.SIDECAR).write_text(json.dumps({"commit": "b" * 40, "clean": False}))  # data/features
    (old / ".done").write_text("2700 utterances\n")  # made before records were kept
    (aside / ".done").write_text(json.dumps({"code": rec}))
    got = code_record.collect([exp])
    assert got == {str(a): rec, str(b): {"commit": "b" * 40, "clean": False}, str(old): code_version.UNKNOWN}
    lines = code_record.markdown(got)
    assert lines[0] == "## Code"
    assert f"- `{'a' * 7} (clean)`: 1 outputs ({a})" in lines
    assert f"<!-- code: {'a' * 40}:clean {'b' * 40}:dirty unknown:unknown -->" in lines


def test_code_record_write_and_the_stage_marker_record_the_current_code(tmp_path):
    code_record.write(tmp_path)
    (tmp_path / ".done").write_text("1 utterances\n")
    assert code_record.read(tmp_path) == {k: code_version.current()[k] for k in ("commit", "clean")}
    import stage_marker

    out = tmp_path / "out"
    assert stage_marker.main([str(out), "--write", str(tmp_path / "p.json"), "--value", "seed=0"]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["code"] == code_version.current()


def test_update_readme_check_says_current_stale_or_unknown(tmp_path, capsys):
    repo, head = make_repo(tmp_path)
    block = "intro\n<!-- results:begin -->\n| system |\n\n<!-- code: {} -->\n<!-- results:end -->\n"
    assert update_readme.check(block.format(f"{head}:clean"), repo)[0] is True
    (repo / "tests" / "test_a.py").write_text("changed\n")
    assert update_readme.check(block.format(f"{head}:clean"), repo)[0] is True
    (repo / "espnet_hdmole" / "layer.py").write_text("x = 2\n")
    ok, why = update_readme.check(block.format(f"{head}:clean"), repo)
    assert not ok and why.startswith("stale: 1 file(s)") and "espnet_hdmole/layer.py" in why
    ok, why = update_readme.check(block.format(f"{head}:dirty"), repo)
    assert not ok and "uncommitted changes" in why
    assert update_readme.check(block.format(f"{head}:clean unknown:unknown"), repo)[0] is False
    assert update_readme.check(block.format(""), repo)[0] is False  # no finished output at all
    ok, why = update_readme.check(block.replace("<!-- code: {} -->\n", ""), repo)
    assert not ok and why.startswith("unknown: the README's results block records no commit")
    readme = tmp_path / "README.md"
    readme.write_text(block.replace("<!-- code: {} -->\n", ""))
    assert update_readme.main(["--check", "--readme", str(readme)]) == 1
    assert "records no commit" in capsys.readouterr().out
    # a dev block is checked too
    dev = "<!-- dev:begin -->\n<!-- code: {} -->\n<!-- dev:end -->\n"
    git(repo, "checkout", "-q", "--", ".")
    good = block.format(f"{head}:clean")
    assert update_readme.check(good + dev.format(f"{head}:clean"), repo)[0] is True
    ok, why = update_readme.check(good + dev.format(f"{head}:dirty"), repo)
    assert not ok and "dev block" in why and why.splitlines()[0].startswith("current: the results block")


def test_update_readme_writes_the_dev_block_from_tune_devs_results(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:begin -->\nR\n<!-- results:end -->\nb\n<!-- dev:begin -->\nold\n<!-- dev:end -->\nc\n")
    dev = tmp_path / "RESULTS.md"
    dev.write_text("# Settings chosen on dev\n\n| setting |\n\n## Code\n\n- `abc`\n\n<!-- code: x:clean -->\n")
    assert update_readme.main(["--dev_results", str(dev), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "\nR\n" in text and text.endswith("<!-- dev:end -->\nc\n")
    dev_block = text[text.index("<!-- dev:begin -->"):]
    assert "local/tune_dev.py --ladder conf/tune_dev.yaml" in dev_block and "**Code**" in dev_block
    assert "# Settings chosen on dev" not in dev_block and "<!-- code: x:clean -->" in dev_block
    dev.write_text("no title\n")
    assert update_readme.main(["--dev_results", str(dev), "--readme", str(readme)]) == 1


def test_update_readme_writes_several_dev_results_and_checks_every_commit_they_name(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:begin -->\nR\n<!-- results:end -->\nb\n<!-- dev:begin -->\nold\n<!-- dev:end -->\n")
    one, two = tmp_path / "one.md", tmp_path / "two.md"
    one.write_text("# Settings chosen on dev\n\n| lora |\n\n<!-- code: x:clean -->\n")
    two.write_text("# Settings chosen on dev\n\n| lora_proj |\n\n<!-- code: y:dirty -->\n")
    args = ["--dev_results", str(one), str(two), "--readme", str(readme)]
    assert update_readme.main(args) == 1  # one command for two files
    assert update_readme.main(args + ["--dev_command", "cmd one", "cmd two"]) == 0
    block = update_readme.block_text(readme.read_text(), "dev")
    assert block.index("cmd one") < block.index("| lora |") < block.index("cmd two") < block.index("| lora_proj |")
    repo, head = make_repo(tmp_path)
    assert update_readme.check_block(block.replace("x:clean", f"{head}:clean").replace("y:dirty", f"{head}:clean"),
                                     "dev", repo)[0] is True
    ok, why = update_readme.check_block(block.replace("x:clean", f"{head}:clean"), "dev", repo)
    assert not ok and "y with uncommitted changes" in why  # the second file's commit is checked too
