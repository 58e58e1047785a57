"""Bootstrap intervals of the systems and of their paired differences (local/system_intervals.py)."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

LOCAL = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"
sys.path.insert(0, str(LOCAL))
import cer_bootstrap  # noqa: E402
import system_intervals  # noqa: E402
import update_readme  # noqa: E402
from test_results import ACCENTS, fake_exp, md_tables, run_results  # noqa: E402,F401

SETS = [f"test_{a}" for a in ACCENTS] + ["source_test"]


def write_per_utt(sys_dir: Path, test_set: str, rows) -> None:
    """rows: (uid, errors, reference characters); all errors written as substitutions."""
    p = system_intervals.per_utt_path(sys_dir, test_set)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(f"id: ({u})\nScores: (#C #S #D #I) {n - e} {e} 0 0\n\n" for u, e, n in rows),
                 encoding="utf-8")


def test_read_scored_keeps_ids_and_refuses_bad_files(tmp_path):
    write_per_utt(tmp_path, "a", [("u2", 1, 10), ("u1", 0, 5)])
    ids, scores = cer_bootstrap.read_scored(system_intervals.per_utt_path(tmp_path, "a"))
    assert ids == ["u2", "u1"] and scores.tolist() == [[1, 10], [0, 5]]
    bad = tmp_path / "dup.txt"
    bad.write_text("id: (u1)\nScores: (#C #S #D #I) 1 0 0 0\nid: (u1)\nScores: (#C #S #D #I) 1 0 0 0\n")
    with pytest.raises(cer_bootstrap.ScoreFileError, match=r"dup\.txt: utterance 'u1' is scored more than once"):
        cer_bootstrap.read_scored(bad)
    bad.write_text("Scores: (#C #S #D #I) 1 0 0 0\n")
    with pytest.raises(cer_bootstrap.ScoreFileError, match=r"dup\.txt:1: a 'Scores:' line without"):
        cer_bootstrap.read_scored(bad)


def test_paired_difference_is_tighter_than_independent_resampling(tmp_path):
    """B makes exactly one more error than A on every 4th utterance: the paired interval lies
    above 0, while resampling the two systems apart (what pairing replaces) cannot tell them apart."""
    rng = np.random.default_rng(1)
    errors = rng.binomial(20, 0.3, 200)
    for s in SETS:
        write_per_utt(tmp_path / "A", s, [(f"u{i:03d}", int(e), 20) for i, e in enumerate(errors)])
        # B's file in the other order: the pairing goes by utterance id, not by line
        write_per_utt(tmp_path / "B", s, [(f"u{i:03d}", int(e) + (i % 4 == 0), 20) for i, e in enumerate(errors)][::-1])
    res = system_intervals.compute({"A": tmp_path / "A", "B": tmp_path / "B"}, ACCENTS, "source_test",
                                   baseline="A", mains=["B"])
    d, lo, hi = res["pairs"]["B"]["A"]["accent_avg"]
    assert d == pytest.approx(100 * 50 / 4000) and 0 < lo <= d <= hi
    assert system_intervals.verdict(res["pairs"]["B"]["A"]["accent_avg"], "B") == "B worse"
    assert res["systems"]["B"]["delta_source"][1] > 0 and res["systems"]["A"]["delta_source"] is None
    a = cer_bootstrap.read_per_utt(system_intervals.per_utt_path(tmp_path / "A", "source_test"))
    b = cer_bootstrap.read_per_utt(system_intervals.per_utt_path(tmp_path / "B", "source_test"))
    _, ulo, uhi = cer_bootstrap.difference(b, a)
    assert ulo < 0 < uhi
    # a system against itself: a tie
    res = system_intervals.compute({"A": tmp_path / "A", "C": tmp_path / "A"}, ACCENTS, "source_test", None, ["C", "D"])
    assert system_intervals.verdict(res["pairs"]["C"]["A"]["source"], "C") == "tie within CI"
    assert res["pairs"]["C"]["A"]["source"] == (0.0, 0.0, 0.0) and list(res["pairs"]) == ["C"]


def test_systems_with_other_utterances_are_refused(tmp_path):
    for name, last in (("A", "u2"), ("B", "u3")):
        for s in SETS:
            write_per_utt(tmp_path / name, s, [("u1", 1, 10), (last, 0, 10)])
    with pytest.raises(system_intervals.IntervalError,
                       match=r"test_Beijing: systems `A` \(.*A/decode_test_Beijing/score_cer/per_utt.txt\) and `B` "
                             r"\(.*B/decode_test_Beijing/score_cer/per_utt.txt\) scored different"):
        system_intervals.compute({"A": tmp_path / "A", "B": tmp_path / "B"}, ACCENTS, "source_test", None, ["A"])


def test_make_results_still_writes_the_tables_when_systems_scored_other_utterances(fake_exp, capsys):
    p = system_intervals.per_utt_path(fake_exp / "exp" / "full_ft", "test_Beijing")
    p.write_text(p.read_text(encoding="utf-8").replace("id: (b2)", "id: (b9)"), encoding="utf-8")
    run_results(fake_exp, "--no_plots")
    text = (fake_exp / "exp" / "RESULTS.md").read_text(encoding="utf-8")
    assert "| [hdmole](hdmole/RESULTS.md) |" in text and "## Confidence intervals" not in text
    assert "WARNING: no confidence intervals" in capsys.readouterr().err


def test_cer_plot_takes_intervals_whose_bounds_round_past_the_point(tmp_path):
    from results_plots import plot_cer

    systems = [{"name": "a", "result": {f"test_{x}": {"cer_pct": 10.0} for x in ACCENTS}}]
    sets = {f"test_{x}": (10.0, 10.000000000000002, 10.000000000000002) for x in ACCENTS}
    plot_cer(systems, ACCENTS, tmp_path / "cer.png", {"a": {"sets": sets}})
    assert (tmp_path / "cer.png").stat().st_size > 0


def test_make_results_writes_intervals_and_the_readme_carries_them(fake_exp, tmp_path):
    run_results(fake_exp, "--no_plots")
    text = (fake_exp / "exp" / "RESULTS.md").read_text(encoding="utf-8")
    ci = next(t for t in md_tables(text) if t.get("system", [])[:2] == ["accent avg", "95% CI"])
    for name, (avg, src) in {"hdmole": (4.17, 10.0), "full_ft": (4.55, 20.0), "source": (17.42, 0.0)}.items():
        row = ci[name]
        assert float(row[0]) == pytest.approx(avg, abs=0.005) and float(row[2]) == pytest.approx(src)
        lo, hi = map(float, row[1].strip("[]").split(","))
        assert lo <= avg + 0.005 and avg - 0.005 <= hi
    assert ci["source"][4:] == ["-", "-"] and ci["hdmole"][4] == "+10.00"
    pairs = next(t for t in md_tables(text) if "hdmole minus" in t)
    assert pairs["full_ft"][0] == "-0.38" and pairs["full_ft"][3] == "-10.00"
    assert pairs["source"][3] == "+10.00"
    assert "hdmole minus" in pairs
    # a main system that did not run gets no table; the claims' main systems always get one
    run_results(fake_exp, "--no_plots", "--main_systems", "nosuch")
    text = (fake_exp / "exp" / "RESULTS.md").read_text(encoding="utf-8")
    assert "| nosuch minus |" not in text and "| hdmole minus |" in text
    run_results(fake_exp, "--no_plots")
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:begin -->\n<!-- results:end -->\n", encoding="utf-8")
    assert update_readme.main(["--results", str(fake_exp / "exp" / "RESULTS.md"), "--readme", str(readme)]) == 0
    body = readme.read_text(encoding="utf-8")
    assert "**Confidence intervals**" in body and "**Paired differences**" in body
    assert "| full_ft | -0.38 |" in body


def test_claim_verdicts_follow_the_interval():
    import claims

    assert claims.judge((-2.0, -3.0, -1.0), "lower") == "holds"
    assert claims.judge((2.0, 1.0, 3.0), "lower") == "does not hold"
    assert claims.judge((0.5, -1.0, 2.0), "lower") == "tie within CI"
    assert claims.judge((-2.0, -3.0, -1.0), "match") == "holds (better)"
    assert claims.judge((2.0, 1.0, 3.0), "match") == "does not hold"
    assert claims.judge((0.5, -1.0, 2.0), "match") == "tie within CI"
    iv = {"pairs": {"hdmole_proj": {"big": {"accent_avg": (0.1, -0.5, 0.7), "source": (-2.0, -3.0, -1.0)}}}}
    systems = {"hdmole_proj": {"params": {"trainable": 96}}, "big": {"params": {"trainable": 1000}}}
    rows = {r["text"]: r for r in claims.verdicts(iv, systems, full_ft="big")}
    match = rows["HDMoLE on the projector matches full fine-tuning on the target accents"]
    assert match["comparison"] == "`hdmole_proj` vs `big`" and match["verdict"] == "tie within CI"
    assert match["figures"] == "Δ accent avg CER +0.10 [-0.50, +0.70]"
    assert rows["... with 9.6% of full fine-tuning's trainable parameters"]["figures"] == "9.60% (paper: 9.6%)"
    assert rows["... with 9.6% of full fine-tuning's trainable parameters"]["verdict"] == "holds"
    systems["hdmole_proj"]["params"]["trainable"] = 97
    assert claims.verdicts(iv, systems, full_ft="big")[1]["verdict"] == "does not hold"
    assert rows["HDMoLE on the projector degrades the source domain less than full fine-tuning"]["verdict"] == "holds"
    assert rows["hierarchical routing (the accent-ID global router) helps on the target accents"]["verdict"].startswith(
        "not judged: `hdmole` or `hdmole_nohier`")


def test_make_results_judges_the_claims_from_its_own_intervals(fake_exp):
    run_results(fake_exp, "--no_plots", "--full_ft_system", "full_ft")
    text = (fake_exp / "exp" / "RESULTS.md").read_text(encoding="utf-8")
    table = next(t for t in md_tables(text) if "claim" in t)
    row = table["HDMoLE degrades the source domain less than full fine-tuning"]
    pairs = next(t for t in md_tables(text) if "hdmole minus" in t)
    assert row[0] == "`hdmole` vs `full_ft`"
    assert row[1] == f"Δ source CER {pairs['full_ft'][3]} {pairs['full_ft'][4]}"
    assert row[2] == {"hdmole better": "holds", "hdmole worse": "does not hold"}.get(pairs["full_ft"][5], pairs["full_ft"][5])


def test_seed_spread_groups_seed_runs_with_their_system():
    import seed_spread

    assert seed_spread.groups(["lora", "hdmole", "lora_seed1", "lora_seed2", "x_seed1"]) == {
        "lora": ["lora", "lora_seed1", "lora_seed2"]}
    systems = [{"name": "lora", "accent_avg": 30.0, "source_cer": 10.0},
               {"name": "lora_seed1", "accent_avg": 32.0, "source_cer": 11.0},
               {"name": "lora_seed2", "accent_avg": 34.0, "source_cer": None},  # not decoded: left out
               {"name": "hdmole", "accent_avg": 29.0, "source_cer": 9.0}]
    text = "\n".join(seed_spread.markdown(systems))
    assert "| lora | 2 | 30.00, 32.00 | 31.00 ± 1.41 | 10.00, 11.00 | 10.50 ± 0.71 |" in text
    assert "| hdmole |" not in text
    assert seed_spread.markdown(systems[3:]) == []


def test_seed_runs_are_judged_per_seed_and_kept_out_of_the_tables(fake_exp):
    """Issue 13 item 2: the runs of other seeds (<system>_seed<k>) are not rows of the systems, interval
    or paired tables; the claims are judged again on each seed's pair of runs."""
    exp = fake_exp / "exp"
    for name in ("hdmole", "full_ft"):
        shutil.copytree(exp / name, exp / f"{name}_seed1")
    # seed 1 of hdmole: its source errors gone, so 'degrades the source less' comes out otherwise there
    src = exp / "hdmole_seed1" / "decode_source_test" / "score_cer" / "per_utt.txt"
    src.write_text(src.read_text(encoding="utf-8").replace("(#C #S #D #I) 3 1 0 0", "(#C #S #D #I) 4 0 0 0"),
                   encoding="utf-8")
    run_results(fake_exp, "--no_plots", "--full_ft_system", "full_ft")
    text = (exp / "RESULTS.md").read_text(encoding="utf-8")
    tables = md_tables(text)
    for t in tables:
        if "claim" not in t and "system" in t and "runs" not in t["system"]:  # every table but claims and seeds
            assert not any(k.startswith(("[hdmole_seed1]", "hdmole_seed1", "full_ft_seed1")) for k in t), t
    assert not any("hdmole_seed1 minus" in t for t in tables)
    claims_table = next(t for t in tables if "claim" in t)
    assert claims_table["claim"][-2:] == ["other seeds", "over all runs"]
    row = claims_table["HDMoLE degrades the source domain less than full fine-tuning"]
    assert row[1:3] == ["Δ source CER -10.00 [-16.67, +0.00]", "tie within CI"]
    assert row[3] == "seed 1: -20.00 [-25.00, -16.67] holds"
    assert row[4] == "tie within CI on 1 of 2 runs; holds on 1 of 2 runs"
    seeds = next(t for t in tables if "system" in t and "runs" in t["system"])
    assert seeds["hdmole"][0] == "2" and seeds["full_ft"][0] == "2"


def test_bootstrap_interval_of_a_hand_computed_case(tmp_path):
    """Two utterances of 10 characters per set: u1 with 1 error, u2 with none. A draw of two
    utterances holds u1 twice (CER 10%, probability 1/4), once (5%, 1/2) or never (0%, 1/4), so the
    95% interval of a set's CER is exactly [0, 10] around 5. The accent average of two such sets
    (drawn apart) is 0% or 10% with probability 1/16 each, more than 2.5%: again [0, 10]. B makes one
    more error than A on u2: B - A is 0, 5 or 10 points with the same probabilities, so its
    interval [0, 10] holds 0, a tie."""
    for s in SETS:
        write_per_utt(tmp_path / "A", s, [("u1", 1, 10), ("u2", 0, 10)])
        write_per_utt(tmp_path / "B", s, [("u1", 1, 10), ("u2", 1, 10)])
    res = system_intervals.compute({"A": tmp_path / "A", "B": tmp_path / "B"}, ACCENTS, "source_test",
                                   baseline="A", mains=["B"])
    assert res["systems"]["A"]["sets"]["test_Beijing"] == (5.0, 0.0, 10.0)
    assert res["systems"]["A"]["accent_avg"] == (5.0, 0.0, 10.0)
    assert res["systems"]["A"]["source"] == (5.0, 0.0, 10.0)
    assert res["pairs"]["B"]["A"]["accent_avg"] == (5.0, 0.0, 10.0)
    assert res["systems"]["B"]["delta_source"] == (5.0, 0.0, 10.0)
    assert system_intervals.verdict(res["pairs"]["B"]["A"]["accent_avg"], "B") == "tie within CI"


def test_restrict_keeps_only_the_shown_systems_among_those_not_fully_scored():
    """A seed run that missed a set is not named in the "Not every set scored" line of the tables,
    which show only the shown systems."""
    res = {"systems": {"a": {}, "b": {}}, "pairs": {"a": {"b": {}, "b_seed1": {}}},
           "skipped": ["b_seed1", "c"], "draws": 10, "seed": 0}
    shown = system_intervals.restrict(res, ["a", "b", "c"], ["a"])
    assert shown["skipped"] == ["c"]
    assert list(shown["pairs"]["a"]) == ["b"]
    assert res["skipped"] == ["b_seed1", "c"]  # the full result is left as it was
