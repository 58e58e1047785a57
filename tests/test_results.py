"""Tests of the recipe's reporting (stage 6): local/make_results.py and its helpers (accent-ID
confusions, bootstrap intervals, the accent effect) and local/update_readme.py,
on hand-made decode outputs whose counts are worked out by hand (scoring: test_score_cer.py)."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

LOCAL = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"
sys.path.insert(0, str(LOCAL))
import make_results  # noqa: E402
import score_cer  # noqa: E402
from test_score_cer import kaldi, write  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# make_results.py on a fake exp dir
# --------------------------------------------------------------------------
ACCENTS = ["Beijing", "Ji-Lu"]
REFS = {
    "test_Beijing": {"b1": "今天天气很好", "b2": "北京欢迎你"},            # 11 chars
    "test_Ji-Lu": {"j1": "我们学习语音识别", "j2": "谢谢大家"},          # 12 chars
    "source_test": {"s1": "你好世界", "s2": "早上好朋友们"},             # 10 chars
}
HYPS = {
    # Beijing 2/11 (1 del + 1 ins), Ji-Lu 2/12 (1 sub + 1 del), source 0/10
    "source": {"test_Beijing": {"b1": "今天天很好啊", "b2": "北京欢迎你"},
               "test_Ji-Lu": {"j1": "我们学习语言识别", "j2": "谢谢大"},
               "source_test": {"s1": "你好世界", "s2": "早上好朋友们"}},
    # Beijing 1/11 (1 del), Ji-Lu 0/12, source 2/10 (1 del + 1 sub)
    "full_ft": {"test_Beijing": {"b1": "今天天气很好", "b2": "北京欢迎"},
                "test_Ji-Lu": {"j1": "我们学习语音识别", "j2": "谢谢大家"},
                "source_test": {"s1": "你好世", "s2": "早上好朋友门"}},
    # Beijing 0/11, Ji-Lu 1/12 (1 ins), source 1/10 (1 sub)
    "hdmole": {"test_Beijing": {"b1": "今天天气很好", "b2": "北京欢迎你"},
               "test_Ji-Lu": {"j1": "我们学习语音识别", "j2": "谢谢大家啊"},
               "source_test": {"s1": "你好是界", "s2": "早上好朋友们"}},
}
ROUTING = {
    "layers": {
        "llm.layers.0.self_attn.q_proj": {"accents": ACCENTS, "mean_weight": [[0.7, 0.1], [0.2, 0.6]],
                                          "mean_active": 1.25, "mean_active_speech": 1.5, "mean_active_text": 1.125,
                                          "mean_weight_speech": [[0.6, 0.4], [0.3, 0.7]]},
        "llm.layers.0.self_attn.v_proj": {"accents": ACCENTS, "mean_weight": [[0.5, 0.5], [0.1, 0.9]],
                                          "mean_active": 1.75},
    },
    "accent_acc": 0.9,
}


@pytest.fixture()
def fake_exp(tmp_path):
    data, exp = tmp_path / "data", tmp_path / "exp"
    write(data / "accents.txt", "\n".join(ACCENTS) + "\n")
    for s, rows in REFS.items():
        write(data / s / "text", kaldi(rows))
    dec_s = {"source": 1.0, "full_ft": 2.0, "hdmole": 3.0}
    for sysname, sets in HYPS.items():
        for s, rows in sets.items():
            d = exp / sysname / f"decode_{s}"
            write(d / "1best_recog" / "text", kaldi(rows))
            score_cer.main(["--ref", str(data / s / "text"), "--hyp", str(d / "1best_recog" / "text"),
                            "--out_dir", str(d / "score_cer")])
            if not (sysname == "hdmole" and s == "source_test"):  # missing rtf -> RTF '-'
                write(d / "rtf", f"utterances 2\ndecoding_seconds {dec_s[sysname]:.3f}\n"
                                 f"audio_seconds 10.000\nrtf {dec_s[sysname] / 10:.5f}\nbeam_size 1\n"
                                 + ("ngram_weight 0.5\n" if s == "test_Ji-Lu" else "")  # absent: none
                                 + f"threads 4\nencoder_timed {0 if s == 'test_Ji-Lu' else 1}\n")
    # source: no params.json -> trainable and % '-'
    write(exp / "full_ft" / "params.json", json.dumps(
        {"trainable": 1000000, "reference": 1000000, "share": 100.0, "full_ft_trainable": None}))
    write(exp / "full_ft" / "train_stats.json", json.dumps({"accent_acc": 0.8, "mean_active": {}}))
    write(exp / "hdmole" / "params.json", json.dumps(
        {"trainable": 25000, "reference": 900000, "share": 25000 / 9000, "full_ft_trainable": 1000000}))
    write(exp / "hdmole" / "routing.json", json.dumps(ROUTING))
    write(exp / "hdmole" / "train_stats.json", json.dumps(
        {"accent_acc": 0.95, "mean_active": {"llm.layers.0.self_attn.q_proj": 1.5,
                                             "llm.layers.0.self_attn.v_proj": 2.5}}))
    return tmp_path


def run_results(root, *extra):
    return make_results.main(["--exp_dir", str(root / "exp"), "--accents_file",
                              str(root / "data" / "accents.txt"), *extra])


def md_tables(text: str):
    """Markdown tables -> list of {first cell: [other cells]}, header row included."""
    tables, cur = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if re.fullmatch(r"\|(:?-+:?\|)+", line):
                continue  # separator row
            if cur is None:
                cur = {}
                tables.append(cur)
            cells = [c.strip() for c in line.strip()[1:-1].split("|")]
            cur[cells[0]] = cells[1:]
        else:
            cur = None
    return tables


def md_table(text: str, column: str):
    """The one table whose header has this column."""
    found = [t for t in md_tables(text) if column in next(iter(t.values()))]
    assert len(found) == 1, (column, found)
    return found[0]


SUMMARY_ROWS = {  # worked out by hand from HYPS, params.json, routing.json and rtf above
    #              Beijing  Ji-Lu   avg        source   Δ source  trainable    % FT     acc            active  RTF
    "source": ["18.18", "16.67", "17.42", "0.00", "+0.00", "-", "-", "-", "-", "0.1000"],
    "full_ft": ["9.09", "0.00", "4.55", "20.00", "+20.00", "1,000,000", "100.00", "80.00 (dev)", "-",
                "0.2000"],
    "hdmole": ["0.00", "8.33", "**4.17**", "10.00", "+10.00", "25,000", "2.50", "90.00 (dev)", "1.50", "-"],
}


def test_make_results_summary_table(fake_exp, capsys):
    out = run_results(fake_exp)
    assert [s["name"] for s in out["systems"]] == ["full_ft", "hdmole", "source"]  # sorted discovery
    text = (fake_exp / "exp" / "RESULTS.md").read_text(encoding="utf-8")
    assert text.startswith("<!-- Generated by local/make_results.py on ")
    assert "Do not edit by hand" in text.splitlines()[0]
    rows = md_table(text, "trainable params")
    assert rows["system"] == ["Beijing", "Ji-Lu", "accent avg", "source", "Δ source vs source",
                              "trainable params", "% of full FT", "accent-ID acc",
                              "mean active experts", "RTF"]
    for name, want in SUMMARY_ROWS.items():
        assert rows[f"[{name}]({name}/RESULTS.md)"] == want, name
    assert text.count("**") == 2  # exactly one bold cell: the best accent average
    for key in ("- python: ", "- torch: ", "- transformers: ", "- espnet: ", "- CPU: ", "- CPU threads: "):
        assert key in text


def test_make_results_per_system_files(fake_exp):
    run_results(fake_exp)
    exp = fake_exp / "exp"
    hd = (exp / "hdmole" / "RESULTS.md").read_text(encoding="utf-8")
    assert hd.startswith("<!-- Generated by local/make_results.py on ")
    rows = md_table(hd, "CER %")
    assert rows["set"] == ["utterances", "characters", "CER %", "Sub", "Del", "Ins"]
    assert rows["test_Beijing"] == ["2", "11", "0.00", "0", "0", "0"]
    assert rows["test_Ji-Lu"] == ["2", "12", "8.33", "0", "0", "1"]
    assert rows["accent average (unweighted mean of 2)"] == ["4", "23", "4.17", "-", "-", "-"]
    assert rows["accent total (char-weighted)"] == ["4", "23", "4.35", "0", "0", "1"]
    assert rows["source_test (source domain)"] == ["2", "10", "10.00", "1", "0", "0"]
    assert "- Δ vs baseline `source` (0.00 %): +10.00 CER points" in hd
    assert "- trainable: 25,000" in hd
    assert "- % of full fine-tuning: 2.50 (of the 1,000,000 trainable parameters of system `full_ft`)" in hd
    assert "- accent-ID accuracy on dev (routing.json): 90.00 %" in hd
    rows = md_table(hd, "heat map")
    # decoding (valid positions), speech / text positions apart, training
    assert rows["`llm.layers.0.self_attn.q_proj`"][:3] == ["1.25", "1.50 / 1.12", "1.50"]
    assert rows["`llm.layers.0.self_attn.v_proj`"][:3] == ["1.75", "-", "2.50"]
    assert rows["mean over layers"][:3] == ["1.50", "", "2.00"]
    rows = md_table(hd, "RTF")
    assert rows["set"] == ["utterances", "decoding s", "audio s", "RTF", "beam", "n-gram weight", "threads", "encoder"]
    assert rows["test_Ji-Lu"] == ["2", "3.00", "10.00", "0.3000", "1", "0.5", "4", "stored, not timed"]
    assert rows["test_Beijing"][-1] == "timed" and rows["test_Beijing"][5] == "0"
    assert rows["source_test"] == ["-"] * 8  # no rtf file for hdmole's source set
    assert rows["all sets (total decoding s / total audio s)"][3] == "-"

    src_text = (exp / "source" / "RESULTS.md").read_text(encoding="utf-8")
    src = md_table(src_text, "CER %")
    assert src["test_Beijing"] == ["2", "11", "18.18", "0", "1", "1"]
    assert src["test_Ji-Lu"] == ["2", "12", "16.67", "1", "1", "0"]
    assert src["accent total (char-weighted)"] == ["4", "23", "17.39", "1", "2", "1"]
    assert md_table(src_text, "RTF")["all sets (total decoding s / total audio s)"][3] == "0.1000"
    assert "- - (no params.json)" in (exp / "source" / "RESULTS.md").read_text(encoding="utf-8")


def test_make_results_missing_inputs_give_dashes(fake_exp):
    exp = fake_exp / "exp"
    (exp / "source" / "decode_test_Ji-Lu" / "score_cer" / "result.json").unlink()
    (exp / "full_ft" / "params.json").unlink()  # % of full FT falls back to params.json share
    run_results(fake_exp)
    rows = md_table((exp / "RESULTS.md").read_text(encoding="utf-8"), "trainable params")
    assert rows["[source](source/RESULTS.md)"][:3] == ["18.18", "-", "-"]  # no average without Ji-Lu
    assert rows["[full_ft](full_ft/RESULTS.md)"][2] == "4.55"
    assert rows["[full_ft](full_ft/RESULTS.md)"][5:7] == ["-", "-"]
    assert rows["[hdmole](hdmole/RESULTS.md)"][2] == "**4.17**"
    assert rows["[hdmole](hdmole/RESULTS.md)"][6] == "2.78"  # share = 100 * 25000 / 900000
    src = md_table((exp / "source" / "RESULTS.md").read_text(encoding="utf-8"), "CER %")
    assert src["test_Ji-Lu"] == ["-"] * 6
    assert src["accent average (unweighted mean of 2)"][2] == "-"


def test_make_results_bold_moves_and_baseline_missing(fake_exp, capsys):
    exp = fake_exp / "exp"
    (exp / "hdmole" / "decode_test_Beijing" / "score_cer" / "result.json").unlink()
    run_results(fake_exp, "--systems", "hdmole", "full_ft", "--baseline", "nonexistent")
    assert "baseline system" in capsys.readouterr().err
    text = (exp / "RESULTS.md").read_text(encoding="utf-8")
    rows = md_table(text, "trainable params")
    assert list(rows)[1:] == ["[hdmole](hdmole/RESULTS.md)", "[full_ft](full_ft/RESULTS.md)"]  # given order
    assert rows["[full_ft](full_ft/RESULTS.md)"][2] == "**4.55**"
    assert rows["[hdmole](hdmole/RESULTS.md)"][2] == "-"
    assert rows["[hdmole](hdmole/RESULTS.md)"][4] == "-" and rows["[full_ft](full_ft/RESULTS.md)"][4] == "-"
    assert "[source]" not in text


def test_make_results_plots_are_png_and_deterministic(fake_exp, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    out = run_results(fake_exp)
    plots = fake_exp / "exp" / "plots"
    names = sorted(p.name for p in plots.iterdir() if not p.name.startswith("."))
    assert names == ["cer_per_accent.png", "routing_hdmole.png"]  # one routing figure per system
    first = {}
    for n in names:
        b = (plots / n).read_bytes()
        assert b[:8] == PNG_MAGIC and len(b) > 5000, n
        first[n] = b
    hd = (fake_exp / "exp" / "hdmole" / "RESULTS.md").read_text(encoding="utf-8")
    assert md_table(hd, "heat map")["`llm.layers.0.self_attn.q_proj`"][-1] == "[png](../plots/routing_hdmole.png)"
    assert md_table(hd, "heat map")["`llm.layers.0.self_attn.v_proj`"][-1] == "[png](../plots/routing_hdmole.png)"
    md = {f: Path(f).read_text(encoding="utf-8") for f in out["files"] if f.endswith(".md")}
    assert all("on 1970-01-01." in t.splitlines()[0] for t in md.values())

    (plots / ".routing_keys.json").unlink()  # draw every routing plot again
    run_results(fake_exp)
    for n in names:
        assert (plots / n).read_bytes() == first[n], n
    for f, t in md.items():
        assert Path(f).read_text(encoding="utf-8") == t, f


def test_make_results_draws_a_routing_plot_again_only_when_its_data_changed(fake_exp):
    run_results(fake_exp)
    plots = fake_exp / "exp" / "plots"
    fig = plots / "routing_hdmole.png"
    fig.write_bytes(b"marker")
    run_results(fake_exp)
    assert fig.read_bytes() == b"marker"  # same data: not drawn again
    routing = fake_exp / "exp" / "hdmole" / "routing.json"
    r = json.loads(routing.read_text())
    w = r["layers"]["llm.layers.0.self_attn.q_proj"]["mean_weight"]
    w[0] = list(reversed(w[0]))
    routing.write_text(json.dumps(r))
    run_results(fake_exp)
    assert fig.read_bytes()[:8] == PNG_MAGIC  # one layer's data changed: the system's figure is redrawn


def test_make_results_without_date_override_only_date_line_differs(fake_exp, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    run_results(fake_exp, "--no_plots")
    a = (fake_exp / "exp" / "RESULTS.md").read_text(encoding="utf-8").splitlines()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    run_results(fake_exp, "--no_plots")
    b = (fake_exp / "exp" / "RESULTS.md").read_text(encoding="utf-8").splitlines()
    assert len(a) == len(b) and [i for i, (x, y) in enumerate(zip(a, b)) if x != y] == [0]
    assert not (fake_exp / "exp" / "plots").exists()


def test_make_results_bad_inputs(fake_exp):
    exp = fake_exp / "exp"
    write(exp / "hdmole" / "routing.json", json.dumps(
        {"layers": {"l0": {"accents": ACCENTS, "mean_weight": [[0.5, 0.5]]}}}))
    with pytest.raises(make_results.ResultsError, match=r"hdmole/routing.json: layer 'l0'"):
        run_results(fake_exp)
    write(exp / "hdmole" / "routing.json", json.dumps(dict(ROUTING, accent_acc=90.0)))
    with pytest.raises(make_results.ResultsError, match=r"accent_acc must be a fraction"):
        run_results(fake_exp)
    write(exp / "hdmole" / "routing.json", json.dumps(ROUTING))
    write(exp / "hdmole" / "decode_test_Beijing" / "rtf", "rtf fast\n")
    with pytest.raises(make_results.ResultsError, match=r"decode_test_Beijing/rtf:1: value of 'rtf'"):
        run_results(fake_exp)
    with pytest.raises(make_results.ResultsError, match=r"nope: system directory not found"):
        run_results(fake_exp, "--systems", "nope")


def test_make_results_discovers_accents_without_file(fake_exp, monkeypatch):
    monkeypatch.chdir(fake_exp / "exp")  # no data/accents.txt here
    out = make_results.main(["--exp_dir", str(fake_exp / "exp"), "--no_plots"])
    assert out["accents"] == ["Beijing", "Ji-Lu"]


def test_make_results_reads_model_info_layout_with_nulls(fake_exp):
    # espnet_hdmole.bin.model_info writes null for what it could not measure, and extra keys
    exp = fake_exp / "exp"
    layer = dict(ROUTING["layers"]["llm.layers.0.self_attn.q_proj"], mean_active=None, num_domains=2,
                 experts_per_domain=1, activation="threshold", global_router="predicted")
    write(exp / "hdmole" / "routing.json", json.dumps(
        {"accent_acc": None, "set": "dump/dev", "utterances": 4, "layers": {"q": layer}}))
    write(exp / "hdmole" / "train_stats.json", json.dumps({"accent_acc": None, "mean_active": {"q": None}}))
    out = run_results(fake_exp)
    rows = md_table((exp / "RESULTS.md").read_text(encoding="utf-8"), "trainable params")
    assert rows["[hdmole](hdmole/RESULTS.md)"][7:9] == ["-", "-"]  # accent-ID acc, mean active
    hd = (exp / "hdmole" / "RESULTS.md").read_text(encoding="utf-8")
    assert md_table(hd, "heat map")["`q`"] == ["-", "1.50 / 1.12", "-", "[png](../plots/routing_hdmole.png)"]
    assert "- accent-ID accuracy on dev (routing.json): - %" in hd
    png = exp / "plots" / "routing_hdmole.png"
    assert str(png) in out["files"] and png.read_bytes()[:8] == PNG_MAGIC


def test_update_readme_copies_table_times_and_plots(tmp_path):
    """local/update_readme.py replaces only the marked block: table, stage times, plots."""
    import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin -->\nold\n<!-- results:end -->\noutro\n", encoding="utf-8")
    results = tmp_path / "RESULTS.md"
    results.write_text("# t\n\n| system | CER |\n|---|---:|\n| [hdmole](hdmole/RESULTS.md) | 12.5 |\n\nafter\n\n"
                       "## The accent effect on the source model\n\n| set | CER |\n|---|---:|\n| test_X | 9.0 |\n"
                       "\n## Plots\n\nnot copied\n", encoding="utf-8")
    times = tmp_path / "stage_times.txt"
    times.write_text("1 10\n4 100\n4 90\n", encoding="utf-8")
    png = tmp_path / "plots" / "cer_per_accent.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG fake")
    assert update_readme.main(["--results", str(results), "--readme", str(readme), "--stage_times", str(times),
                               "--plots", str(png)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n<!-- results:begin -->\n") and text.endswith("<!-- results:end -->\noutro\n")
    assert "old" not in text and "| hdmole | 12.5 |" in text and "after" not in text
    assert "**The accent effect on the source model**\n\n| set | CER |" in text and "| test_X | 9.0 |" in text
    assert "not copied" not in text
    assert "stage 1: 10, stage 4: 90; total 100 s" in text
    assert "![cer_per_accent](docs/results/cer_per_accent.png)" in text
    assert (tmp_path / "docs" / "results" / "cer_per_accent.png").read_bytes() == b"\x89PNG fake"
    png.write_bytes(b"x" * 300 * 1024)
    assert update_readme.main(["--results", str(results), "--readme", str(readme), "--plots", str(png)]) == 1
    assert (tmp_path / "docs" / "results" / "cer_per_accent.png").read_bytes() == b"\x89PNG fake"  # nothing copied


def test_accent_id_confusion_over_test_sets_and_dev(fake_exp):
    """The accents predicted by decoding give the test-set accuracy of the table and a confusion
    matrix per system; the dev matrix comes from train_stats.json; a bad line is named."""
    exp = fake_exp / "exp"
    write(exp / "hdmole" / "decode_test_Beijing" / "1best_recog" / "accent", "b1 Beijing\nb2 Ji-Lu\n")
    write(exp / "hdmole" / "decode_test_Ji-Lu" / "1best_recog" / "accent", "j1 Ji-Lu\nj2 Ji-Lu\n")
    write(exp / "hdmole" / "train_stats.json", json.dumps(
        {"accent_acc": 0.75, "mean_active": {}, "accent_confusion": {"accents": ["Ji-Lu", "Beijing"],
                                                                     "counts": [[2, 0], [1, 1]]}}))
    run_results(fake_exp)
    rows = md_table((exp / "RESULTS.md").read_text(encoding="utf-8"), "trainable params")
    assert rows["[hdmole](hdmole/RESULTS.md)"][7] == "75.00"  # 3 of the 4 test utterances
    hd = (exp / "hdmole" / "RESULTS.md").read_text(encoding="utf-8")
    assert "dev 75.00; test sets 75.00" in hd
    tables = [t for t in md_tables(hd) if "accent" in t]
    recall = tables[-1]
    assert recall["Beijing"] == ["50.0", "50.0"] and recall["Ji-Lu"] == ["100.0", "100.0"]
    assert (exp / "plots" / "accent_id_hdmole.png").stat().st_size > 0
    assert not (exp / "plots" / "accent_id_source.png").exists()
    write(exp / "hdmole" / "decode_test_Ji-Lu" / "1best_recog" / "accent", "j1 Ji-Lu\nj2 Klingon\n")
    with pytest.raises(make_results.ResultsError, match=r"decode_test_Ji-Lu/1best_recog/accent:2"):
        run_results(fake_exp)


def test_cer_bootstrap_intervals():
    import cer_bootstrap

    rng = np.random.default_rng(0)
    easy = np.stack([rng.binomial(20, 0.1, 300), np.full(300, 20)], 1)
    hard = np.stack([rng.binomial(20, 0.3, 300), np.full(300, 20)], 1)
    d, lo, hi = cer_bootstrap.difference(hard, easy)
    assert lo < d < hi and lo > 10  # about +20 points, far from 0
    d, lo, hi = cer_bootstrap.difference(easy, easy)
    assert d == 0 and lo < 0 < hi
    r, lo, hi = cer_bootstrap.ratio(hard, easy)
    assert lo < r < hi and 2.0 < r < 4.0


def test_accent_effect_section_reads_per_utterance_scores(fake_exp):
    import accent_effect

    lines = accent_effect.markdown(fake_exp / "exp" / "hdmole", "hdmole", ACCENTS, "source_test", reference="Beijing")
    text = "\n".join(lines)
    assert "| test_Beijing | 0.00 | 0 | - | (reference) |" in text
    assert re.search(r"\| test_Ji-Lu \| 8\.33 \| \+8\.33 \| \[\+0\.00, \+\d+\.\d+\] \| no \(a tie\) \|", text), text
    assert "test_Beijing / source_test CER ratio: 0.00" in text
    assert accent_effect.markdown(fake_exp / "exp" / "hdmole", "hdmole", ACCENTS, "source_test") == []  # no test_Mandarin
