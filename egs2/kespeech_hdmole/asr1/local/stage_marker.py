#!/usr/bin/env python3
"""Done-markers that know their inputs: should an output directory be made, resumed, kept or redone?

    python local/stage_marker.py OUT_DIR --write PENDING.json [inputs ...]

Inputs (each may repeat; the label in the record is the option and its path, or LABEL):
  --file [LABEL=]PATH  a file's content: a config, a checkpoint, CMVN statistics. With a LABEL
                     the record keys it by its role, so the same content at another path is
                     the same input (the log still names the path)
  --data DIR         a data or dump directory (its wav.scp/feats.scp, text, utt2accent,
                     speech_shape and the .done fingerprint of its features)
  --model_dir DIR    every file of a model directory (e.g. the LLM), hidden files excepted
  --value NAME=TEXT  a setting (extra training options, the seed, the decoding options)
  --model_config Y   a trained model's config.yaml, with the base it builds on: its --init_param
                     checkpoints and its LLM directory (model_conf.llm_dir)

It writes the fingerprint of the inputs to PENDING.json and prints one verdict on stdout:
  done               OUT_DIR/.done records the same inputs: nothing to do
  done: NOTE         the same, but made by other code than this checkout's: NOTE says which, and
                     which files the results depend on changed since (a code change does not redo
                     a stage by itself: the recipe says so and keeps the output)
  new                no run in OUT_DIR yet
  resume             an unfinished run from the same inputs (OUT_DIR/.inputs): continue it
  stale: REASONS     OUT_DIR was made (or started) from other inputs, or holds a run with no
                     record of them: it must be redone
The recipe copies PENDING.json to OUT_DIR/.inputs when it starts a run and to OUT_DIR/.done when
the run has finished. Errors (a missing input) are one line on stderr, exit status 1.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import code_record  # noqa: E402
from package_modules import package_module  # noqa: E402

_errors, _fingerprint = package_module("errors"), package_module("utils.fingerprint")
UserError, run_cli = _errors.UserError, _errors.run_cli
DATA_DIR_FILES, changes, file_sha256 = _fingerprint.DATA_DIR_FILES, _fingerprint.changes, _fingerprint.file_sha256
files_sha256, text_sha256 = _fingerprint.files_sha256, _fingerprint.text_sha256

FORMAT = 1
RUN_FILES = ("*.pth", ".ckpt.pth", "1best_recog")  # signs of a run (training, LLM pre-training, decoding)


def model_config_inputs(config: str):
    """(files, model dirs) that a trained model's config.yaml builds the model from."""
    import yaml

    if not Path(config).is_file():
        raise UserError(f"model config '{config}' does not exist")
    conf = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    files = [config] + [str(spec).split(":")[0] for spec in conf.get("init_param") or []]
    llm = (conf.get("model_conf") or {}).get("llm_dir")
    return files, [llm] if llm else []


def fingerprint(a: argparse.Namespace) -> dict:
    inputs, paths = {}, {}
    for config in a.model_config:
        files, dirs = model_config_inputs(config)
        a.file, a.model_dir = a.file + files, a.model_dir + dirs
    for item in a.file:
        label, sep, path = item.partition("=")
        if not sep or "/" in label or Path(item).exists():
            label, path = f"file {item}", item
        else:
            paths[label] = f"{label} {path}"
        if not Path(path).is_file():
            raise UserError(f"input file '{path}' of {a.out_dir} does not exist")
        inputs[label] = file_sha256(path)
    for kind, dirs, names in (("data", a.data, DATA_DIR_FILES), ("model dir", a.model_dir, None)):
        for d in dirs:
            if not Path(d).is_dir():
                raise UserError(f"input directory '{d}' of {a.out_dir} does not exist")
            inputs[f"{kind} {d}"] = files_sha256(d, names)
    for item in a.value:
        name, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--value {item!r}: expected NAME=TEXT")
        inputs[name] = text_sha256(" ".join(text.split()))
    # which code made the output: recorded; a change does not redo a stage, but is reported (code_note)
    return {"format": FORMAT, "inputs": inputs, "names": paths, "code": code_record.code_version.current()}


def read_record(path: Path):
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == FORMAT else None


def _said(why) -> str:
    return "; ".join(why[:3] + ([f"and {len(why) - 3} more"] if len(why) > 3 else []))


def code_note(old: dict, current: dict) -> str:
    """'' when a finished run was made by the code of this checkout, as far as git can tell, else
    what is known of the difference: the tracked files the results depend on that changed since its
    commit (untracked ones, such as outputs of another --exp_dir, are left out), or that it ran with
    other uncommitted changes. Unknown code (no git) on either side says nothing."""
    cv = code_record.code_version
    was, now = old.get("code") or {}, current.get("code") or {}
    if not was.get("commit") or not now.get("commit"):
        return ""
    made = f"made by code {cv.label(was)}"
    if was.get("clean") is None:
        return f"{made}: whether it matches this checkout is not known"
    if was.get("clean") is False:
        same = was.get("changes") is not None and (was.get("commit"), was.get("changes")) == (
            now.get("commit"), now.get("changes"))
        if same:
            return ""
        known = "other than this checkout's" if was.get("changes") is not None else "not recorded"
        return f"{made}, whose uncommitted changes were {known}"
    changed = cv.changed_since(str(was["commit"]), untracked=False)
    if changed is None:
        return f"{made}, which git cannot compare with this checkout (a commit it lacks, or git failed)"
    if not changed:
        return ""
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    files = "file the results depend on has" if len(changed) == 1 else "files the results depend on have"
    return f"{made}; since then {len(changed)} {files} changed ({shown})"


def verdict(out: Path, current: dict) -> str:
    done, started = out / ".done", out / ".inputs"
    if done.exists():
        old = read_record(done)
        if old is None:
            return "stale: the finished run has no record of its inputs (made by an older version of the recipe)"
        why = changes(old["inputs"], current["inputs"], current["names"])
        if why:
            return "stale: " + _said(why)
        note = code_note(old, current)
        return f"done: {note}" if note else "done"
    if started.exists():
        old = read_record(started)
        why = ["the unfinished run has no readable record of its inputs"] if old is None else \
            changes(old["inputs"], current["inputs"], current["names"])
        return "resume" if not why else "stale: unfinished run from other inputs: " + _said(why)
    if out.is_dir() and any(next(out.glob(p), None) is not None for p in RUN_FILES):
        return "stale: it holds an unfinished run with no record of its inputs"
    return "new"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--write", type=Path, required=True, help="where the fingerprint of the inputs goes")
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--data", action="append", default=[])
    ap.add_argument("--model_dir", action="append", default=[])
    ap.add_argument("--value", action="append", default=[])
    ap.add_argument("--model_config", action="append", default=[])
    a = ap.parse_args(argv)
    current = fingerprint(a)
    a.write.parent.mkdir(parents=True, exist_ok=True)
    a.write.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(verdict(a.out_dir, current))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
