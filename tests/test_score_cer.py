"""Tests of the recipe's scoring (stage 6): local/score_cer.py on hand-made decode outputs whose
counts are worked out by hand. The helpers write/kaldi are shared with test_results.py."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

LOCAL = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"
sys.path.insert(0, str(LOCAL))
import score_cer  # noqa: E402


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def kaldi(rows) -> str:
    return "".join(f"{k} {v}\n" if v else f"{k}\n" for k, v in rows.items())


# --------------------------------------------------------------------------
# score_cer.py
# --------------------------------------------------------------------------
def run_score(tmp_path, ref_rows, hyp_rows, name="t"):
    ref = write(tmp_path / "data" / "test_X" / "text", kaldi(ref_rows))
    hyp = write(tmp_path / "exp" / "decode" / "1best_recog" / "text", kaldi(hyp_rows))
    out = tmp_path / "exp" / "decode" / "score_cer"
    res = score_cer.main(["--ref", str(ref), "--hyp", str(hyp), "--out_dir", str(out)])
    return res, out


def test_score_one_deletion_one_insertion(tmp_path):
    res, out = run_score(tmp_path, {"u1": "今天天气很好"}, {"u1": "今天天很好啊"})
    on_disk = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert on_disk == res
    want = {"utterances": 1, "ref_chars": 6, "hyp_chars": 6, "hits": 5, "substitutions": 0,
            "deletions": 1, "insertions": 1, "errors": 2, "sentence_errors": 1, "missing_hyp": 0}
    assert {k: on_disk[k] for k in want} == want
    assert on_disk["cer"] == 2 / 6
    assert on_disk["ser"] == 1.0
    assert on_disk["set"] == "test_X"  # from the directory of --ref

    lines = (out / "per_utt.txt").read_text(encoding="utf-8").splitlines()
    i = lines.index("id: (u1)")
    assert lines[i + 1] == "Scores: (#C #S #D #I) 5 0 1 1"
    assert lines[i + 2] == "CER: 33.33% [ 2 / 6 ]"
    # one column per aligned position; '**' pads a wide character; marks under the errors
    assert lines[i + 3] == "REF:  今 天 天 气 很 好 **"
    assert lines[i + 4] == "HYP:  今 天 天 ** 很 好 啊"
    assert lines[i + 5] == "Eval:          D        I"

    summary = (out / "result.txt").read_text(encoding="utf-8")
    assert re.search(r"\|\s*SPKR\s*\|\s*#Snt\s*\|\s*#Wrd\s*\|\s*Corr\s*\|\s*Sub\s*\|\s*Del\s*\|"
                     r"\s*Ins\s*\|\s*Err\s*\|\s*S\.Err\s*\|", summary)
    assert re.search(r"\|\s*Sum/Avg \(%\)\s*\|\s*1\s*\|\s*6\s*\|\s*83\.33\s*\|\s*0\.00\s*\|\s*16\.67\s*\|"
                     r"\s*16\.67\s*\|\s*33\.33\s*\|\s*100\.00\s*\|", summary)
    assert "%CER 33.33 [ 2 / 6, 1 ins, 1 del, 0 sub ]" in summary


def test_score_spaces_removed_substitution_and_totals(tmp_path):
    # spaces (ASCII and ideographic) are not characters; the set totals add up per utterance
    res, out = run_score(tmp_path, {"a": "北京 欢迎你", "b": "谢谢大家", "c": "abc"},
                         {"a": "北京\u3000欢迎您", "b": "谢 谢 大 家", "c": "abd"})
    assert (res["ref_chars"], res["hits"], res["substitutions"], res["deletions"],
            res["insertions"]) == (12, 10, 2, 0, 0)
    assert res["cer"] == 2 / 12
    assert res["sentence_errors"] == 2 and res["ser"] == 2 / 3
    text = (out / "per_utt.txt").read_text(encoding="utf-8")
    assert "REF:  北 京 欢 迎 你\nHYP:  北 京 欢 迎 您\nEval:             S\n" in text
    assert "REF:  a b c\nHYP:  a b d\nEval:     S\n" in text
    # per_utt.txt follows the order of --ref
    assert [m for m in re.findall(r"^id: \((\w+)\)$", text, re.M)] == ["a", "b", "c"]


def test_a_real_llms_punctuation_full_width_and_traditional_forms_are_not_errors(tmp_path):
    """Scoring uses data preparation's normaliser (local/transcript_text.py) on both sides: what
    a real LLM writes beyond the characters (punctuation, tags, full-width forms, a stray
    bracket) costs nothing; traditional characters count unless --t2s true."""
    ref = {"u1": "今天天气很好", "u2": "我有3个AI助手", "u3": "学习语音识别"}
    hyp = {"u1": "今天，天氣很好！", "u2": "<unk>我有３個ＡＩ助手。", "u3": "「学习」语音识别 <"}
    res, out = run_score(tmp_path, ref, hyp)
    assert (res["substitutions"], res["deletions"], res["insertions"]) == (2, 0, 0)  # 氣 and 個 only
    assert "REF:  今 天 天 气 很 好" in (out / "per_utt.txt").read_text(encoding="utf-8")
    r = score_cer.main(["--ref", str(tmp_path / "data" / "test_X" / "text"), "--hyp",
                        str(tmp_path / "exp" / "decode" / "1best_recog" / "text"),
                        "--out_dir", str(tmp_path / "t2s"), "--t2s", "true"])
    assert r["errors"] == 0 and r["ref_chars"] == 6 + 8 + 6


def test_t2s_without_opencc_is_one_error_line(tmp_path):
    """--t2s true where OpenCC cannot be imported: one line naming the package, no traceback."""
    blocker = write(tmp_path / "block" / "opencc.py", "raise ImportError('opencc blocked for this test')\n")
    ref = write(tmp_path / "ref", "u1 今天天气很好\n")
    hyp = write(tmp_path / "hyp", "u1 今天天氣很好\n")
    env = {"PYTHONPATH": str(blocker.parent), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, str(LOCAL / "score_cer.py"), "--ref", str(ref), "--hyp", str(hyp),
                        "--out_dir", str(tmp_path / "out"), "--t2s", "true"], capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("score_cer.py: error: ") and "'opencc'" in p.stderr


def test_score_missing_hypothesis_warns_and_counts_deletions(tmp_path, capsys):
    res, out = run_score(tmp_path, {"u1": "今天天气很好", "u2": "你好", "u3": "早上好"},
                         {"u1": "今天天气很好", "u3": ""})  # u2 absent, u3 empty
    err = capsys.readouterr().err
    assert "WARNING: 1 of 3 utterance(s)" in err and "u2" in err
    assert res["missing_hyp"] == 1
    assert (res["hits"], res["deletions"], res["insertions"], res["substitutions"]) == (6, 5, 0, 0)
    assert res["cer"] == 5 / 11
    text = (out / "per_utt.txt").read_text(encoding="utf-8")
    block = text[text.index("id: (u2)"):text.index("id: (u3)")]
    assert "no hypothesis" in block and "HYP:  ** **" in block and "Eval: D  D" in block
    assert "no hypothesis" not in text[text.index("id: (u3)"):]  # an empty hyp is a hypothesis
    assert "WARNING: 1 utterance(s) had no hypothesis" in (out / "result.txt").read_text(encoding="utf-8")


def test_score_unknown_hyp_id_is_an_error(tmp_path):
    with pytest.raises(score_cer.ScoringError, match=r"1best_recog/text: 1 utterance id\(s\) not in "
                                                     r"the reference .*: zz9"):
        run_score(tmp_path, {"u1": "你好"}, {"u1": "你好", "zz9": "好"})
    assert not (tmp_path / "exp" / "decode" / "score_cer" / "result.json").exists()


def test_score_empty_reference_is_an_error_with_line(tmp_path):
    with pytest.raises(score_cer.ScoringError, match=r"test_X/text:2: empty reference transcript for 'u2'"):
        run_score(tmp_path, {"u1": "你好", "u2": "", "u3": "好"}, {"u1": "你好"})


def test_score_cli_exit_status_and_message(tmp_path):
    ref = write(tmp_path / "ref", "u1 你好\n")
    hyp = write(tmp_path / "hyp", "u1 你好\nu7 好\n")
    res = subprocess.run([sys.executable, str(LOCAL / "score_cer.py"), "--ref", str(ref), "--hyp",
                          str(hyp), "--out_dir", str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 1
    assert "score_cer.py: error:" in res.stderr and str(hyp) in res.stderr and "u7" in res.stderr
    assert "Traceback" not in res.stderr
