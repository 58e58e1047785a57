"""local/merge_decode_shards.py: the decoding jobs' outputs merged in the key order, their rtf
summed; an utterance decoded by no job or by two is an error."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"))
import merge_decode_shards as mds  # noqa: E402


def shard(d: Path, rows, seconds):
    (d / "1best_recog").mkdir(parents=True)
    (d / "1best_recog" / "text").write_text("".join(f"{k} {v}\n" for k, v in rows), encoding="utf-8")
    (d / "1best_recog" / "score").write_text("".join(f"{k} -1.0\n" for k, _ in rows), encoding="utf-8")
    (d / "rtf").write_text(f"utterances {len(rows)}\ndecoding_seconds {seconds}\naudio_seconds 10.0\n"
                           f"rtf {seconds / 10:.5f}\nbeam_size 4\nthreads 1\n", encoding="utf-8")
    return d


def test_merge_keeps_the_key_order_and_sums_the_time(tmp_path):
    keys = ["u3", "u1", "u2"]  # the scp's order, not sorted
    a = shard(tmp_path / "a", [("u3", "早上好"), ("u1", "你好")], 1.0)
    b = shard(tmp_path / "b", [("u2", "谢谢")], 3.0)
    assert mds.main(["--keys", str(write_keys(tmp_path, keys)), "--out_dir", str(tmp_path / "out"), str(b), str(a)]) == 0
    assert (tmp_path / "out" / "1best_recog" / "text").read_text(encoding="utf-8") == "u3 早上好\nu1 你好\nu2 谢谢\n"
    assert (tmp_path / "out" / "1best_recog" / "score").read_text().split("\n")[0] == "u3 -1.0"
    rtf = dict(line.split() for line in (tmp_path / "out" / "rtf").read_text().splitlines())
    assert rtf["utterances"] == "3" and rtf["rtf"] == "0.20000" and rtf["jobs"] == "2" and rtf["beam_size"] == "4"


def write_keys(tmp_path, keys):
    p = tmp_path / "feats.scp"
    p.write_text("".join(f"{k} x.ark:{i}\n" for i, k in enumerate(keys)), encoding="utf-8")
    return p


@pytest.mark.parametrize("rows_b, said", [
    ([("u2", "谢谢"), ("u1", "你好")], "decoded by two jobs"),
    ([], "decoded by no job"),
    ([("u2", "谢谢"), ("u9", "多")], "not in the key list"),
])
def test_a_lost_or_doubled_utterance_is_an_error(tmp_path, capsys, rows_b, said):
    a = shard(tmp_path / "a", [("u1", "你好")], 1.0)
    b = shard(tmp_path / "b", rows_b, 1.0)
    assert mds.main(["--keys", str(write_keys(tmp_path, ["u1", "u2"])), "--out_dir", str(tmp_path / "out"),
                     str(a), str(b)]) == 1
    assert said in capsys.readouterr().err
    assert not (tmp_path / "out" / "1best_recog" / "text").exists()
