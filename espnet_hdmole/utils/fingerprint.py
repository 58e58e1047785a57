"""Content fingerprints of the files that a stage or a model was made from.

A fingerprint is a mapping ``label -> sha256`` (labels name the input: a config path, a
checkpoint path, a data directory). Two fingerprints are compared with :func:`changes`, which
says in words what differs, so that a recipe can redo a stage and log why.

Hashing reads every byte, so large unchanged files (checkpoints, an LLM's weights) are hashed
once per run and, with ``HDMOLE_HASH_CACHE=FILE`` in the environment, once across runs: the cache
keys a hash by the file's real path, size and modification time (as ``make`` trusts them).
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

CACHE_ENV = "HDMOLE_HASH_CACHE"
# the tables of a Kaldi-style data or dump directory that define its content (feature arks are
# covered by feats.scp plus the .done fingerprint that local/compute_fbank.py writes)
DATA_DIR_FILES = ("wav.scp", "feats.scp", "text", "utt2accent", "speech_shape", ".done")

_memo: Dict[tuple, str] = {}


def _cache_path() -> Optional[Path]:
    p = os.environ.get(CACHE_ENV, "")
    return Path(p) if p else None


def _load_cache(path: Path) -> Dict[str, list]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def file_sha256(path: Union[str, Path]) -> str:
    """sha256 of a file's bytes (symlinks followed)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    cache_file = _cache_path()
    cache = _load_cache(cache_file) if cache_file else {}
    hit = cache.get(real)
    if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        _memo[key] = hit[2]
        return hit[2]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    _memo[key] = digest
    if cache_file:
        cache = _load_cache(cache_file)  # re-read: keep what others added meanwhile
        cache[real] = [st.st_size, st.st_mtime_ns, digest]
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    return digest


def files_sha256(root: Union[str, Path], names: Optional[Iterable[str]] = None) -> str:
    """One hash over the named files of a directory that exist (default: every regular file
    below it whose name does not start with '.'), with their relative names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"directory '{root}' does not exist")
    if names is None:
        rel = sorted(
            str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    else:
        rel = [n for n in names if (root / n).is_file()]
    h = hashlib.sha256()
    for name in rel:
        h.update(f"{name}\0{file_sha256(root / name)}\n".encode())
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def changes(old: Dict[str, str], new: Dict[str, str], names: Optional[Dict[str, str]] = None) -> List[str]:
    """What differs between two fingerprints, in words (empty when they are equal); ``names``
    gives a label's wording where it differs from the label (e.g. the file behind it)."""
    names = names or {}
    out = [f"{names.get(k, k)} changed" for k in new if k in old and old[k] != new[k]]
    out += [f"{names.get(k, k)} is a new input" for k in new if k not in old]
    out += [f"{k} is no longer an input" for k in old if k not in new]
    return out
