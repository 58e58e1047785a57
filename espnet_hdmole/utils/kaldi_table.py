"""Kaldi-style tables (``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``, ``utt2accent``, ...):
text files of ``<id> <value>`` lines, read with checks whose every message names the file (and
the line), and written atomically.

One module for the package (tasks/llm_asr.py checks a run's data files) and the recipe's local/
scripts (data_dir.py, prepare_kespeech.py, score_cer.py, accent_id_data.py, ...). It imports only
the standard library: the recipe loads this file on its own (local/package_modules.py), because
importing ``espnet_hdmole`` loads ESPnet and torch.

Reading: :func:`read_table`. A line is an id, whitespace, then the value (the rest of the line,
surrounding whitespace removed): the split of ESPnet's ``read_2columns_text``, so a file read here
holds the same ids and values ESPnet reads from it. Always refused: a missing file, bytes that
are not UTF-8, a line that starts with whitespace, an id given twice. The options:

* ``what`` / ``key_name``: how messages call the value and the id (``'<utterance-id> <speaker>'``);
* ``allow_empty``: a line may hold only an id (its value is ``""``);
* ``single_token``: the value must not hold whitespace (a speaker, a label);
* ``sorted_ids``: ids strictly increasing in byte order (``LC_ALL=C sort``), as ESPnet and Kaldi
  data directories need;
* ``skip_blank_lines``: False refuses blank lines (``read_2columns_text`` cannot read them);
* ``strip_bom``: False refuses a UTF-8 byte-order mark (ESPnet would read it as part of the first
  id) instead of dropping it;
* ``require_rows``: an empty file is refused;
* ``error``: the exception type raised (called with the message), so each caller keeps its own
  (``DataDirError``, ``UserError``, ...); :class:`KaldiTableError` by default.

Writing: :func:`write_file` writes any text atomically (a temporary file in the same directory,
then ``os.replace``), and not at all when the file already holds that text (so its time stamp
says when its content last changed); :func:`write_table` writes rows sorted by id;
:func:`spk2utt` derives that table from ``utt2spk``.

Why not ``espnet2.fileio``: ``read_2columns_text`` names the file and line only for a repeated
id; a blank line fails with a bare unpacking error, invalid UTF-8 without a line, and a missing
file, a missing value or an unsorted file are not reported at all. ``DatadirWriter`` writes in
place (an interrupted run leaves a half-written file), in the order given, and only warns about a
repeated id. Importing ``espnet2`` would also load what the recipe's scripts must not wait for.
Where ESPnet's own format is the point, its writer stays: bin/llm_asr_inference.py writes the
decoding output with ``DatadirWriter``.
"""
import os
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Union

PathLike = Union[str, Path]
BOM = "\ufeff"


class KaldiTableError(ValueError):
    """A missing or malformed table; the message names the file and, where it can, the line."""


class Table(dict):
    """id -> value in file order, with where each row came from (``lines[id]``, ``where(id)``)."""

    def __init__(self, path: PathLike):
        super().__init__()
        self.path = Path(path)
        self.lines: Dict[str, int] = {}

    def where(self, key: str) -> str:
        """``<file>:<line>`` of the row of ``key``, for messages."""
        return f"{self.path}:{self.lines[key]}"


def read_table(
    path: PathLike,
    what: str = "value",
    *,
    key_name: str = "utterance id",
    allow_empty: bool = False,
    single_token: bool = False,
    sorted_ids: bool = False,
    skip_blank_lines: bool = True,
    strip_bom: bool = True,
    require_rows: bool = False,
    error: Callable[[str], Exception] = KaldiTableError,
) -> Table:
    """The rows of the table at ``path``; ``error(message)`` is raised for the first problem."""
    path = Path(path)
    expected = f"'<{key_name.replace(' ', '-')}> <{what}>'"
    if not path.is_file():
        raise error(f"missing file {path} (expected lines {expected})")
    table = Table(path)
    prev = None
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise error(f"{path}:{n}: not valid UTF-8 ({e})") from None
            if n == 1 and line.startswith(BOM):
                if not strip_bom:
                    raise error(f"{path}:1: the file starts with a byte-order mark (U+FEFF), which "
                                "would be read as part of the first id; save it as UTF-8 without one")
                line = line[len(BOM):]
            if not line.strip():
                if skip_blank_lines:
                    continue
                raise error(f"{path}:{n}: empty line (expected {expected})")
            if line[0].isspace():
                raise error(f"{path}:{n}: line starts with whitespace; expected {expected}, got {line!r}")
            key, *rest = line.split(None, 1)
            value = rest[0].strip() if rest else ""
            if not value and not allow_empty:
                raise error(f"{path}:{n}: expected {expected}, got only {line.strip()!r}")
            if single_token and len(value.split()) > 1:
                raise error(f"{path}:{n}: expected {expected} with a single {what} (no spaces), got {line!r}")
            if key in table:
                raise error(f"{path}:{n}: {key_name} {key!r} appears again (first at line "
                            f"{table.lines[key]}); ids must be unique")
            if sorted_ids and prev is not None and key < prev:
                raise error(f"{path}:{n}: {key_name} {key!r} comes after {prev!r}: the file must be "
                            "sorted by id (LC_ALL=C sort)")
            table[key], table.lines[key], prev = value, n, key
    if require_rows and not table:
        raise error(f"{path}: the file is empty (expected lines {expected})")
    return table


def format_table(rows: Mapping[str, str]) -> str:
    """``<id> <value>`` lines sorted by id in byte order (Python's str order is code point
    order, which is UTF-8 byte order: that of ``LC_ALL=C sort``)."""
    for key, value in rows.items():
        if not key or any(c.isspace() for c in key) or "\n" in value or "\r" in value:
            raise ValueError(f"cannot write the row {key!r} {value!r} as one '<id> <value>' line: the id "
                             "must be non-empty without whitespace, the value without line breaks")
    return "".join(f"{key} {rows[key]}\n" for key in sorted(rows))


def write_file(path: PathLike, content: str) -> bool:
    """Write ``content`` (UTF-8) atomically: readers see the old file or the new one, never a
    part. A file that already holds ``content`` is left alone. -> whether it wrote."""
    path = Path(path)
    data = content.encode("utf-8")
    try:
        if path.is_file() and path.read_bytes() == data:
            return False
    except OSError:
        pass  # unreadable: replace it
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # a plain open, so the file gets the usual permissions
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def write_table(path: PathLike, rows: Mapping[str, str]) -> bool:
    """Write ``rows`` as a table sorted by id (:func:`format_table`, :func:`write_file`)."""
    return write_file(path, format_table(rows))


def spk2utt(utt2spk: Mapping[str, str]) -> Dict[str, str]:
    """speaker -> its utterance ids, sorted and joined by spaces (Kaldi's spk2utt)."""
    groups: Dict[str, List[str]] = {}
    for utt in sorted(utt2spk):
        groups.setdefault(utt2spk[utt], []).append(utt)
    return {spk: " ".join(utts) for spk, utts in groups.items()}
