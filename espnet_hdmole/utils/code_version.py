"""Which code made a result: the git commit of this checkout, and whether the files that results
depend on (the package, the recipe, the install) were as committed.

The recipe records :func:`current` in every stage output's done marker (local/stage_marker.py),
stage 6 gathers those records into RESULTS.md (:func:`summarise`), and local/update_readme.py
copies them into the README and checks them against HEAD (:func:`changed_since`), so that an old
table is never passed off as the current code's.

Only ``hashlib``, ``subprocess`` and ``pathlib`` are imported: the recipe loads this file on its own, without
ESPnet or torch.
"""
import hashlib
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Optional

REPO = Path(__file__).resolve().parents[2]
# what the results depend on, relative to the repository root (tests and docs do not count)
DEPENDS = ("espnet_hdmole", "egs2/kespeech_hdmole/asr1", "setup.py", "tools/install.sh")
UNKNOWN = {"commit": None, "clean": None}


def _git(repo: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def changed_files(repo: Path = REPO, since: str = "HEAD", paths: Iterable[str] = DEPENDS,
                  untracked: bool = True) -> Optional[List[str]]:
    """Files under ``paths`` that differ between commit ``since`` and the working tree, untracked
    ones included (ignored ones not) unless ``untracked`` is False; None when ``repo`` is no git
    checkout or lacks ``since``."""
    paths = list(paths)
    diff = _git(repo, "diff", "--name-only", since, "--", *paths)
    others = _git(repo, "ls-files", "--others", "--exclude-standard", "--", *paths) if untracked else ""
    if diff is None or others is None:
        return None
    return sorted(set(diff.split("\n") + others.split("\n")) - {""})


def current(repo: Path = REPO) -> Dict[str, object]:
    """{"commit": HEAD's full hash, "clean": no change under DEPENDS}, or UNKNOWN outside git. Where
    something changed, "changes" is the sha256 of the changes to tracked files (``git diff HEAD``),
    by which a later run tells whether it has the same uncommitted changes."""
    head = _git(repo, "rev-parse", "HEAD")
    if head is None:
        return dict(UNKNOWN)
    changed = changed_files(repo, "HEAD")
    record: Dict[str, object] = {"commit": head.strip(), "clean": None if changed is None else not changed}
    if changed:
        diff = _git(repo, "diff", "HEAD", "--", *DEPENDS)
        record["changes"] = None if diff is None else hashlib.sha256(diff.encode("utf-8")).hexdigest()
    return record


def changed_since(commit: str, repo: Path = REPO, untracked: bool = True) -> Optional[List[str]]:
    """Files the results depend on that changed from ``commit`` to the working tree (None: unknown);
    untracked files left out unless ``untracked``."""
    return changed_files(repo, commit, untracked=untracked)


def label(record: Dict[str, object]) -> str:
    """'1a2b3c4 (clean)', '1a2b3c4 (uncommitted changes)' or 'unknown'."""
    if not record or not record.get("commit"):
        return "unknown"
    state = {True: "clean", False: "uncommitted changes", None: "state unknown"}[record.get("clean")]
    return f"{str(record['commit'])[:7]} ({state})"


def summarise(records: Dict[str, Dict[str, object]]) -> Dict[str, object]:
    """Records {output dir: code record} -> {"versions": [{"commit", "clean", "outputs": [...]}, ...]},
    the version that made the most outputs first, unknown ones last."""
    groups: Dict[tuple, List[str]] = {}
    for out, rec in records.items():
        rec = rec or UNKNOWN
        groups.setdefault((rec.get("commit"), rec.get("clean")), []).append(out)
    versions = [{"commit": c, "clean": k, "outputs": sorted(outs)} for (c, k), outs in groups.items()]
    versions.sort(key=lambda v: (-len(v["outputs"]), v["commit"] is None, str(v["commit"])))
    return {"versions": versions}
