"""Tests of espnet_hdmole/utils/kaldi_table.py: reading Kaldi-style '<id> <value>' tables (each
option, every error naming the file and line) and writing them atomically."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from espnet_hdmole.utils import kaldi_table as kt
from espnet_hdmole.utils.kaldi_table import KaldiTableError, read_table

ROOT = Path(__file__).resolve().parents[1]


def table_file(tmp_path, content, name="text", binary=False):
    p = tmp_path / name
    (p.write_bytes if binary else lambda c: p.write_text(c, encoding="utf-8"))(content)
    return p


def fails(path, match, **kw):
    """read_table refuses ``path``; the message starts with the file (and line) and matches."""
    with pytest.raises(KaldiTableError) as e:
        read_table(path, **kw)
    assert re.search(match, str(e.value)), str(e.value)
    return str(e.value)


# ---------------------------------------------------------------------- reading
def test_reads_ids_values_and_lines_in_file_order(tmp_path):
    p = table_file(tmp_path, "b  x y \n\na\tz\r\nc 中文 字\n")
    t = read_table(p)
    assert list(t.items()) == [("b", "x y"), ("a", "z"), ("c", "中文 字")]  # file order, value stripped
    assert t.lines == {"b": 1, "a": 3, "c": 4}  # real line numbers (a blank line was skipped)
    assert t.where("a") == f"{p}:3" and t.path == p


def test_split_is_the_one_espnet_reads(tmp_path):
    """A file that passes holds exactly what ESPnet's read_2columns_text reads from it."""
    from espnet2.fileio.read_text import read_2columns_text

    p = table_file(tmp_path, "u1 a  b\nu2\tc\nu3 d\u3000e  \nu4\n")
    assert dict(read_table(p, allow_empty=True)) == read_2columns_text(p)


def test_missing_file(tmp_path):
    msg = fails(tmp_path / "utt2spk", r"^missing file \S+/utt2spk \(expected lines '<utterance-id> <speaker>'\)$",
                what="speaker")
    assert str(tmp_path) in msg


def test_missing_value_unless_allowed(tmp_path):
    p = table_file(tmp_path, "u1 a\nu2\nu3 c\n")
    fails(p, rf"^{re.escape(str(p))}:2: expected '<utterance-id> <transcript>', got only 'u2'$", what="transcript")
    assert read_table(p, allow_empty=True) == {"u1": "a", "u2": "", "u3": "c"}


def test_single_token(tmp_path):
    p = table_file(tmp_path, "u1 spk1\nu2 spk 2\n")
    assert read_table(p)["u2"] == "spk 2"
    fails(p, rf"^{re.escape(str(p))}:2: expected '<utterance-id> <speaker>' with a single speaker \(no spaces\)",
          what="speaker", single_token=True)
    q = table_file(tmp_path, "u1\n", name="q")
    assert read_table(q, allow_empty=True, single_token=True) == {"u1": ""}


def test_duplicate_ids_are_refused_sorted_or_not(tmp_path):
    p = table_file(tmp_path, "u2 a\nu1 b\n\nu2 c\n")
    fails(p, rf"^{re.escape(str(p))}:4: utterance id 'u2' appears again \(first at line 1\); ids must be unique$")
    q = table_file(tmp_path, "u1 a\nu1 b\n", name="q")
    fails(q, rf"^{re.escape(str(q))}:2: utterance id 'u1' appears again \(first at line 1\)", sorted_ids=True)


def test_sorted_ids_in_byte_order(tmp_path):
    p = table_file(tmp_path, "u2 a\nu1 b\n")
    assert list(read_table(p)) == ["u2", "u1"]  # not required by default
    fails(p, rf"^{re.escape(str(p))}:2: utterance id 'u1' comes after 'u2': the file must be sorted by id "
          r"\(LC_ALL=C sort\)$", sorted_ids=True)
    # byte order (LC_ALL=C sort), not a locale's: upper case before lower case, ASCII before CJK
    ok = table_file(tmp_path, "A 1\nB 2\na 3\nz 4\n中 5\n", name="ok")
    assert list(read_table(ok, sorted_ids=True)) == ["A", "B", "a", "z", "中"]
    fails(table_file(tmp_path, "a 1\nB 2\n", name="bad"), r":2: utterance id 'B' comes after 'a'", sorted_ids=True)


def test_key_name_in_messages(tmp_path):
    p = table_file(tmp_path, "s2 u3\ns1 u1 u2\n", name="spk2utt")
    fails(p, r":2: speaker id 's1' comes after 's2'", sorted_ids=True, key_name="speaker id")
    fails(tmp_path / "nope", r"expected lines '<speaker-id> <value>'", key_name="speaker id")


def test_blank_lines_skipped_or_refused(tmp_path):
    p = table_file(tmp_path, "u1 a\n   \nu2 b\n")
    assert read_table(p) == {"u1": "a", "u2": "b"}
    fails(p, rf"^{re.escape(str(p))}:2: empty line \(expected '<utterance-id> <value>'\)$", skip_blank_lines=False)


def test_line_starting_with_whitespace(tmp_path):
    p = table_file(tmp_path, "u1 a\n u2 b\n")
    fails(p, rf"^{re.escape(str(p))}:2: line starts with whitespace; expected '<utterance-id> <value>', "
          r"got ' u2 b'$")


def test_byte_order_mark_stripped_or_refused(tmp_path):
    p = table_file(tmp_path, "\ufeffu1 a\nu2 b\n")
    assert list(read_table(p, sorted_ids=True)) == ["u1", "u2"]
    fails(p, rf"^{re.escape(str(p))}:1: the file starts with a byte-order mark", strip_bom=False)


def test_invalid_utf8_names_the_line(tmp_path):
    p = table_file(tmp_path, "u1 a\n".encode() + b"u2 \xff\xfe\n", binary=True)
    fails(p, rf"^{re.escape(str(p))}:2: not valid UTF-8 \(")


def test_empty_file_unless_rows_required(tmp_path):
    p = table_file(tmp_path, "\n")
    assert read_table(p) == {}
    fails(p, rf"^{re.escape(str(p))}: the file is empty \(expected lines '<utterance-id> <value>'\)$",
          require_rows=True)


def test_caller_error_type(tmp_path):
    class MyError(RuntimeError):
        pass

    p = table_file(tmp_path, "u1\n")
    with pytest.raises(MyError, match=r"text:1: expected"):
        read_table(p, error=MyError)
    with pytest.raises(MyError, match="missing file"):
        read_table(tmp_path / "nope", error=MyError)


# ---------------------------------------------------------------------- writing
def test_format_table_sorts_by_byte_order():
    assert kt.format_table({"b": "2", "B": "1", "中": "3", "a-1": "", "a": "x y"}) == \
        "B 1\na x y\na-1 \nb 2\n中 3\n"
    for bad in ({"a b": "1"}, {"": "1"}, {"a": "1\n2"}):
        with pytest.raises(ValueError, match="cannot write the row"):
            kt.format_table(bad)


def test_written_table_reads_back(tmp_path):
    rows = {"u2": "b c", "u1": "a", "u3": ""}
    assert kt.write_table(tmp_path / "t", rows) is True
    back = read_table(tmp_path / "t", allow_empty=True, sorted_ids=True, skip_blank_lines=False, strip_bom=False)
    assert list(back.items()) == sorted(rows.items())


def test_write_file_leaves_identical_content_alone(tmp_path):
    p = tmp_path / "f"
    assert kt.write_file(p, "a 1\n") is True
    os.utime(p, ns=(1, 1))
    assert kt.write_file(p, "a 1\n") is False
    assert p.stat().st_mtime_ns == 1  # not rewritten
    assert kt.write_file(p, "a 2\n") is True
    assert p.read_text() == "a 2\n" and p.stat().st_mtime_ns != 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f"]  # no temporary file left


def test_write_file_is_atomic(tmp_path, monkeypatch):
    """The new content goes to a temporary file in the same directory that replaces the file in
    one step: a failure before the replace leaves the old file whole and no temporary file."""
    p = tmp_path / "f"
    p.write_text("old\n")
    seen = []

    def failing_replace(src, dst):
        seen.append((Path(src).parent, Path(src).read_text(), Path(dst)))
        raise OSError("disk full")

    monkeypatch.setattr(kt.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        kt.write_file(p, "new\n")
    assert seen == [(tmp_path, "new\n", p)]  # the whole new content, beside the target
    assert p.read_text() == "old\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f"]


def test_write_file_keeps_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        kt.write_file(tmp_path / "f", "x\n")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_spk2utt():
    assert kt.spk2utt({"s2-b": "s2", "s1-b": "s1", "s1-a": "s1"}) == {"s1": "s1-a s1-b", "s2": "s2-b"}


# ---------------------------------------------------------------------- loading
def test_loads_on_its_own_without_torch():
    """The recipe loads this file on its own (local/package_modules.py): standard library only."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from package_modules import package_module; "
            "m = package_module('utils.kaldi_table'); assert m is package_module('utils.kaldi_table'); "
            "heavy = [x for x in ('torch', 'espnet2', 'espnet_hdmole') if x in sys.modules]; "
            "assert not heavy, heavy")
    local = ROOT / "egs2" / "kespeech_hdmole" / "asr1" / "local"
    res = subprocess.run([sys.executable, "-c", code, str(local)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
