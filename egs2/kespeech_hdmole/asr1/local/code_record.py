"""Which code made each stage output: written when the output is made, gathered by stage 6.

Stages 3-6 record the code in their done markers (local/stage_marker.py puts ``"code"`` beside the
inputs); the data and feature directories of stages 1-2 get a ``.code`` file beside their
``.done``. A record is ``{"commit": HEAD's hash, "clean": no uncommitted change in the files the
results depend on}`` (espnet_hdmole/utils/code_version.py), or unknown outside a git checkout and
for outputs made before the recipe kept records.

Only the standard library is imported (the recipe calls this before every stage output).
"""
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from package_modules import package_module

SIDECAR = ".code"
code_version = package_module("utils.code_version")


def write(out_dir: Path) -> None:
    """Record the current code beside ``out_dir``'s done marker."""
    Path(out_dir, SIDECAR).write_text(json.dumps(code_version.current()) + "\n", encoding="utf-8")


def read(out_dir: Path) -> dict:
    """The code record of a finished output directory (its ``.code``, else its done marker's)."""
    for path, key in ((Path(out_dir, SIDECAR), None), (Path(out_dir, ".done"), "code")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        rec = rec.get(key) if key and isinstance(rec, dict) else rec
        if isinstance(rec, dict) and "commit" in rec:
            return {"commit": rec.get("commit"), "clean": rec.get("clean")}
    return dict(code_version.UNKNOWN)


def collect(dirs: Iterable[Path]) -> Dict[str, dict]:
    """{output dir: code record} of every finished output (a ``.done``) under ``dirs``; runs moved
    aside by the recipe (``*.stale-*``) are left out."""
    out = {}
    for top in map(Path, dirs):
        if not top.is_dir():
            continue
        for done in sorted(top.rglob(".done")):
            if any(".stale-" in part for part in done.parent.parts):
                continue
            out[str(done.parent)] = read(done.parent)
    return out


def _shown(path: str, root: Optional[Path]) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve())) if root else path
    except ValueError:
        return path


def markdown(records: Dict[str, dict], root: Optional[Path] = None) -> List[str]:
    """The '## Code' section of RESULTS.md: which commits made the outputs (their paths shown
    relative to ``root`` where they lie below it), and a machine-readable line
    (``<!-- code: HASH:clean|dirty|unknown ... -->``) that local/update_readme.py reads."""
    versions = code_version.summarise(records)["versions"]
    lines = ["## Code", "",
             "The commit of this checkout that made the outputs (data, features, LLM, models, decodings), "
             "read from their done markers; `local/update_readme.py --check` compares it with the current "
             "code. \"uncommitted changes\" means files under "
             + ", ".join(f"`{p}`" for p in code_version.DEPENDS) + " differed from that commit.", ""]
    if not versions:
        lines.append("- no finished output with a done marker was found")
    for v in versions:
        outs = [_shown(o, root) for o in v["outputs"]]
        shown = ", ".join(outs[:3]) + (f" and {len(outs) - 3} more" if len(outs) > 3 else "")
        lines.append(f"- `{code_version.label(v)}`: {len(outs)} outputs ({shown})")
    state = {True: "clean", False: "dirty"}
    tags = " ".join(f"{v['commit'] or 'unknown'}:{state.get(v['clean'], 'unknown')}" for v in versions)
    lines += ["", f"<!-- code: {tags} -->", ""]
    return lines
