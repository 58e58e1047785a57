"""Shared by the demo corpus's modules: the user-error type, the log line, seeded randomness."""

from __future__ import annotations

import hashlib
import sys

import numpy as np


class CorpusError(RuntimeError):
    """A problem the user has to fix (missing tool, conflicting output, ...)."""


def log(msg: str) -> None:
    print(f"[make_demo_corpus] {msg}", file=sys.stderr, flush=True)


def seeded_rng(*keys) -> np.random.Generator:
    """An RNG that depends only on ``keys`` (not on process or call order)."""
    digest = hashlib.sha256("|".join(map(str, keys)).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
