"""The files of stage 6's inputs, read and checked (for local/make_results.py): scored decodings,
rtf files, params.json, routing.json, train_stats.json, the accents file, and the system and accent
directories of an exp dir. A bad file is a ResultsError that names it (and the line, where it has lines).
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence


class ResultsError(ValueError):
    """Bad or inconsistent input files; the message names the file."""


def load_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_kv(path: Path) -> Optional[Dict[str, float]]:
    """A file of "key value" lines (the decoder's rtf file); values are numbers."""
    if not path.is_file():
        return None
    out: Dict[str, float] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ResultsError(f"{path}:{lineno}: expected 'key value', got {line!r}")
        try:
            out[parts[0]] = float(parts[1])
        except ValueError:
            raise ResultsError(f"{path}:{lineno}: value of {parts[0]!r} is not a number: "
                               f"{parts[1]!r}") from None
    return out


def read_accents(path: Path) -> List[str]:
    if not path.is_file():
        raise ResultsError(f"{path}: accents file not found")
    accents = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not accents:
        raise ResultsError(f"{path}: no accents listed")
    if len(set(accents)) != len(accents):
        raise ResultsError(f"{path}: an accent is listed twice")
    return accents


def _fraction(path: Path, value, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ResultsError(f"{path}: {what} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def load_result(path: Path) -> Optional[dict]:
    r = load_json(path)
    if r is None:
        return None
    need = ("utterances", "ref_chars", "substitutions", "deletions", "insertions")
    miss = [k for k in need if not isinstance(r.get(k), int)]
    if miss:
        raise ResultsError(f"{path}: missing or non-integer field(s) {', '.join(miss)}")
    if r["ref_chars"] <= 0:
        raise ResultsError(f"{path}: ref_chars must be positive")
    r["errors"] = r["substitutions"] + r["deletions"] + r["insertions"]
    r["cer_pct"] = 100.0 * r["errors"] / r["ref_chars"]
    return r


def load_params(path: Path) -> Optional[dict]:
    p = load_json(path)
    if p is None:
        return None
    if not isinstance(p.get("trainable"), int):
        raise ResultsError(f"{path}: 'trainable' must be an integer")
    return p


def load_routing(path: Path) -> Optional[dict]:
    r = load_json(path)
    if r is None:
        return None
    layers = r.get("layers")
    if not isinstance(layers, dict):
        raise ResultsError(f"{path}: 'layers' must be an object {{layer: {{...}}}}")
    for name, L in layers.items():
        acc, mw = L.get("accents"), L.get("mean_weight")
        if not isinstance(acc, list) or not isinstance(mw, list) or len(acc) != len(mw) or not mw:
            raise ResultsError(f"{path}: layer {name!r}: 'mean_weight' needs one row per accent "
                               f"of 'accents'")
        if len({len(row) for row in mw}) != 1 or not mw[0]:
            raise ResultsError(f"{path}: layer {name!r}: rows of 'mean_weight' differ in length")
        if L.get("mean_active", 0) is None:  # null (espnet_hdmole.bin.model_info: not measured) = absent
            del L["mean_active"]
        if "mean_active" in L and (not isinstance(L["mean_active"], (int, float))
                                   or isinstance(L["mean_active"], bool)):
            raise ResultsError(f"{path}: layer {name!r}: 'mean_active' must be a number or null")
    if r.get("accent_acc") is not None:
        r["accent_acc"] = _fraction(path, r["accent_acc"], "accent_acc")
    return r


def load_train_stats(path: Path) -> Optional[dict]:
    t = load_json(path)
    if t is None:
        return None
    if t.get("accent_acc") is not None:
        t["accent_acc"] = _fraction(path, t["accent_acc"], "accent_acc")
    ma = t.get("mean_active")
    if ma is not None and (not isinstance(ma, dict) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in ma.values())):
        raise ResultsError(f"{path}: 'mean_active' must be an object {{layer: number or null}}")
    if ma is not None:  # null (not measured) = absent
        t["mean_active"] = {k: v for k, v in ma.items() if v is not None}
    return t


def discover_systems(exp_dir: Path) -> List[str]:
    out = []
    for d in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
        if (d / "params.json").is_file() or any(d.glob("decode_*/score_cer/result.json")):
            out.append(d.name)
    return out


def discover_accents(exp_dir: Path, systems: Sequence[str]) -> List[str]:
    names = set()
    for s in systems:
        for d in (exp_dir / s).glob("decode_test_*"):
            if d.is_dir():
                names.add(d.name[len("decode_test_"):])
    return sorted(names)
