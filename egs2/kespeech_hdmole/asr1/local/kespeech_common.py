"""Shared by the KeSpeech preparation's modules (prepare_kespeech.py, kespeech_output.py): the nine
accent labels, one prepared utterance, the user-error type and the log line.

The demo corpus takes its domain names from here (demo_accents.DOMAINS), so that real and demo
data directories list the same labels in the same order; nothing here depends on the demo.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence, Tuple

# Fixed order: accents.txt uses it (and so do the accent ids downstream).
LABELS: Tuple[str, ...] = ("Mandarin", "Beijing", "Jiang-Huai", "Jiao-Liao", "Ji-Lu", "Lan-Yin",
                           "Northeastern", "Southwestern", "Zhongyuan")
NAME = "prepare_kespeech.py"
MAX_EXAMPLES = 5


class KeSpeechError(RuntimeError):
    """A problem with the corpus, the arguments or the output directory."""


@dataclass
class Utt:
    id: str
    wav: str  # absolute path (or a command ending in '|', --source_dir only)
    text: str  # normalised
    spk: str
    accent: str
    where: str  # "<wav.scp>:<line>", for messages


def log(msg: str) -> None:
    print(f"[prepare_kespeech] {msg}", file=sys.stderr, flush=True)


def examples(items: Sequence[str], n: int = MAX_EXAMPLES) -> str:
    """The first ``n`` items, one an indented line, and how many more there are."""
    shown = "\n  ".join(items[:n])
    more = f"\n  ... and {len(items) - n} more" if len(items) > n else ""
    return f"\n  {shown}{more}"
