"""The whole recipe at --demo_size tiny: every stage produces its outputs, RESULTS.md holds numbers
for every system, and a re-run of finished stages does no work again."""
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recipe_common import RECIPE, run, run_fails  # noqa: E402 (the recipe fixture: conftest.py)

SYSTEMS = ["full", "lora", "mole_topk", "mole_dense", "hdmole", "hdmole_nohier", "hdmole_topk",
           "full_proj", "lora_proj", "hdmole_proj"]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (tools/install.sh installs it as root)")


def test_every_stage_produces_its_outputs(recipe):
    tmp, out, _ = recipe
    accents = (tmp / "data" / "accents.txt").read_text().split()
    assert len(accents) == 9
    for s in ["source_train", "source_dev", "source_test", "train", "dev"] + [f"test_{a}" for a in accents]:
        for f in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2accent"):
            assert (tmp / "data" / s / f).stat().st_size > 0, (s, f)
        assert (tmp / "dump" / "fbank_pitch" / s / "feats.scp").stat().st_size > 0
        assert (tmp / "dump" / "fbank_pitch" / s / "speech_shape").stat().st_size > 0
    assert (tmp / "dump" / "fbank_pitch" / "cmvn_stats.npz").exists()
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp / "exp" / "llm" / f).exists()
    assert (tmp / "exp" / "source" / "valid.acc.ave.pth").exists()
    # the n-gram LM of stage 3 (transcripts + the demo's unrecorded text), fused in stage 6's search
    extra = (tmp / "data" / "ngram_text").read_text(encoding="utf-8").splitlines()
    recorded = {line.split(" ", 1)[1] for f in (tmp / "data").glob("*/text") for line in f.read_text().splitlines()}
    assert len(extra) > 1000 and not recorded & set(extra)
    assert (tmp / "exp" / "ngram" / "lm.arpa").read_text(encoding="utf-8").startswith("\\data\\")
    assert "perplexity of the" in (tmp / "exp" / "logs" / "stage3_ngram.log").read_text()
    for s in ["source"] + SYSTEMS:
        rtf = (tmp / "exp" / s / "decode_union" / "rtf").read_text()
        assert "beam_size 4" in rtf and "ngram_weight 0.5" in rtf, s
    for s in SYSTEMS:
        assert (tmp / "exp" / s / "valid.acc.ave.pth").exists(), s
        assert json.loads((tmp / "exp" / s / "params.json").read_text())["trainable"] > 0
        for a in accents:
            assert (tmp / "exp" / s / f"decode_test_{a}" / "score_cer" / "result.json").exists()
    stages = [line.split()[0] for line in (tmp / "exp" / "stage_times.txt").read_text().splitlines()]
    assert stages == ["1", "2", "3", "4", "5", "6"]
    for i in range(1, 7):
        assert f"stage {i} done" in out


def test_the_toned_ctc_head_of_step_1b_segments_for_every_later_model(recipe):
    """Step 1 trains the encoder with a toneless CTC, step 1b continues it with toned finals (a new
    head); conf/train_source.yaml compresses with that head: step 2 takes it from step 1b, stage 5
    keeps it (frozen) in the systems."""
    import torch

    from espnet_hdmole.asr.pinyin_units import PinyinUnits

    tmp, out, _ = recipe

    def load(path):
        return torch.load(path, map_location="cpu", weights_only=False)

    step1 = load(tmp / "exp" / "source_encoder" / "valid.loss.best.pth")
    tone = load(tmp / "exp" / "source_encoder_tone" / "valid.loss.best.pth")
    assert step1["ctc.ctc_lo.weight"].shape[0] == len(PinyinUnits(False))  # the blank included
    assert tone["ctc.ctc_lo.weight"].shape[0] == len(PinyinUnits(True))
    assert "step 1b: the CTC over toned units" in out
    enc = tone["ctc.ctc_lo.weight"]
    torch.testing.assert_close(load(tmp / "exp" / "source" / "valid.acc.ave.pth")["ctc.ctc_lo.weight"], enc)
    torch.testing.assert_close(load(tmp / "exp" / "full" / "valid.acc.ave.pth")["ctc.ctc_lo.weight"], enc)


def test_the_frozen_encoder_runs_once_per_set_and_every_run_reads_its_outputs(recipe):
    """Stage 4 writes the source encoder's outputs of train and dev, stage 6 those of the test
    sets; step 3, every system and every decoding read them instead of encoding again."""
    tmp, out, _ = recipe
    accents = (tmp / "data" / "accents.txt").read_text().split()
    for s in ["train", "dev", "source_test"] + [f"test_{a}" for a in accents]:
        d = tmp / "exp" / "encoder_out" / s
        assert (d / ".done").exists() and (d / "encoder_out.scp").stat().st_size > 0, s
    stored = "encoder_out.scp,encoder_out,kaldi_ark"
    for s in ["accent_id"] + SYSTEMS:
        log = (tmp / "exp" / s / "train.log").read_text()
        train = "train_accent_id" if s == "accent_id" else "train"  # the head also hears source utterances
        assert f"train_data_path_and_name_and_type {tmp}/exp/encoder_out/{train}/{stored}" in log, s
        assert f"valid_data_path_and_name_and_type {tmp}/exp/encoder_out/dev/{stored}" in log, s
        assert "stored outputs ('encoder_out') are ignored" not in log, s
    for s in ["source"] + SYSTEMS:
        assert "encoder_timed 0" in (tmp / "exp" / s / "decode_union" / "rtf").read_text(), s
    assert out.count("the frozen encoder's outputs of") == 2  # train+dev, then the test sets, in stage 4
    # they are written from step 1b's encoder by step 3's job, while step 2 trains beside it: train
    # and dev before the head trains, the test sets after it
    written = "the frozen encoder's outputs of [train dev source_train_aid]"
    tests = "the frozen encoder's outputs of [source_test test_"
    assert out.index("step 1b: the CTC over toned units") < out.index("steps 2 and 3 side by side") < out.index(written)
    assert out.index(written) < out.index("step 3: the accent-ID head") < out.index(tests) < out.index("stage 6:")
    assert out.index("step 2: the LLM-based ASR model") < out.index("step 3: the accent-ID head")


def test_the_accent_head_also_trains_on_source_utterances(recipe):
    """Step 3's training set: the accent training set plus --aid_source_utts (300, at most: all 60 of
    the tiny source_train) utterances of source_train as Mandarin, their stored outputs beside."""
    tmp, out, _ = recipe
    dump = tmp / "dump" / "fbank_pitch"

    def ids(path):
        return [line.split()[0] for line in path.read_text().splitlines()]

    train, source = ids(dump / "train" / "utt2accent"), ids(dump / "source_train" / "utt2accent")
    combined = (dump / "train_accent_id" / "utt2accent").read_text().splitlines()
    assert [line.split()[0] for line in combined] == sorted(train + source)
    assert {line.split()[1] for line in combined if line.split()[0] in set(source)} == {"Mandarin"}
    assert ids(tmp / "exp" / "encoder_out" / "train_accent_id" / "encoder_out.scp") == sorted(train + source)
    log = (tmp / "exp" / "accent_id" / "train.log").read_text()
    assert f"{dump}/train_accent_id/feats.scp,speech,kaldi_ark" in log
    assert f"the accent-ID head's training set: train + {len(source)} utterances of source_train" in out



def test_results_hold_numbers_for_every_system(recipe):
    tmp, _, _ = recipe
    text = (tmp / "exp" / "RESULTS.md").read_text()
    for s in ["source"] + SYSTEMS:
        row = next((line for line in text.splitlines() if line.startswith(f"| [{s}]")), None)
        assert row is not None, s
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")][1:]
        cers = cells[:11]  # 9 accents, the accent average, the source CER
        assert all(re.fullmatch(r"\d+\.\d+", c) for c in cers), (s, cers)
        assert (tmp / "exp" / s / "RESULTS.md").exists()
    assert (tmp / "exp" / "plots" / "cer_per_accent.png").stat().st_size > 1000
    assert (tmp / "exp" / "plots" / "routing_hdmole.png").is_file()
    # routing statistics over valid positions, the LLM's speech and text positions apart
    routing = json.loads((tmp / "exp" / "hdmole" / "routing.json").read_text())
    assert routing["positions"].startswith("valid positions only")
    q = next(v for k, v in routing["layers"].items() if k.endswith("q_proj"))
    assert len(q["mean_weight_speech"]) == len(q["mean_weight_text"]) == 9 and q["mean_active_text"] >= 1
    assert "mean_weight_text" not in routing["layers"]["projector.linear1"]
    # the results name the code that made them: every output of this run, data and features included
    from espnet_hdmole.utils import code_version

    head = code_version.current()["commit"]
    tags = re.search(r"<!-- code: (.*?) -->", text).group(1).split()
    assert [t.rpartition(":")[0] for t in tags] == [head], tags
    count = int(re.search(r"`[0-9a-f]{7} \([a-z ]+\)`: (\d+) outputs", text).group(1))
    assert count >= 2 * 14 + len(SYSTEMS) + 1  # the data and feature dirs, each system, ...


def test_hdmole_routes_with_the_frozen_accent_head_of_step_3(recipe):
    """Stage 4 step 3 trains the accent-ID head alone; hdmole starts from it and keeps it; the
    results show its confusion matrix."""
    import torch

    from espnet_hdmole.tasks.llm_asr import LLMASRTask

    tmp, out, _ = recipe
    assert "step 3: the accent-ID head" in out
    aid = torch.load(tmp / "exp" / "accent_id" / "valid.acc_aid.ave.pth", map_location="cpu", weights_only=False)
    head = {k: v for k, v in aid.items() if k.startswith("accent_head.")}
    assert head and any(".convs." in k for k in head)  # the TDNN head of conf/train_accent_id.yaml
    exp = tmp / "exp" / "hdmole"
    model, _ = LLMASRTask.build_model_from_file(exp / "config.yaml", exp / "valid.acc.ave.pth")
    for k, v in head.items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert (tmp / "exp" / "plots" / "accent_id_hdmole.png").stat().st_size > 1000
    assert "## Accent ID (the global router)" in (exp / "RESULTS.md").read_text()


def test_stage_5_decodes_each_system_once_trained_and_stage_6_finds_it_done(recipe):
    """With stage 6 to follow, stage 5's job list ends with the decodings: the source model and
    every system are decoded in stage 5, each after its training has ended, and stage 6 only
    scores them and writes the reports."""
    _, out, _ = recipe
    s5, s6 = out.index("stage 5:"), out.index("stage 6:")
    decoded = re.findall(r"  (\S+): decoded \(rtf", out[s5:s6])
    assert len(decoded) == len(set(decoded)) and set(["source"] + SYSTEMS) <= set(decoded), decoded  # each once
    for s in ["source"] + SYSTEMS:
        at = out.index(f"  {s}: decoded (rtf", s5)
        assert f"{s} decoding: done, skipped" in out[s6:], s
        if s != "source":
            assert out.index(f"  {s}: trainable parameters") < at, s


def test_rerun_does_no_work_again(recipe):
    tmp, _, first = recipe
    t0 = time.time()
    out = run(["--stage", "1", "--stop_stage", "5"], tmp)
    assert "skipped" in out
    for s in SYSTEMS:
        assert f"{s}: done, skipped" in out
    assert "encoder outputs of train: done, skipped" in out
    assert "n-gram LM: done, skipped" in out
    assert time.time() - t0 < 0.5 * first


def test_pretrained_model_fine_tunes_and_decodes_into_another_exp_dir(recipe):
    """--pretrained_model: stages 5-6 from a source model trained elsewhere; stage 6 then decodes
    the fine-tuned systems only (the source model is not in this exp dir)."""
    tmp, _, _ = recipe
    other = tmp / "exp_pretrained"
    out = run(["--stage", "5", "--stop_stage", "6", "--pretrained_model", str(tmp / "exp" / "source" / "valid.acc.ave.pth"),
               "--llm_dir", str(tmp / "exp" / "llm"), "--exp_dir", str(other),
               "--ngram_lm", str(tmp / "exp" / "ngram" / "lm.arpa"),
               "--train_configs", "conf/finetune_lora.yaml"], tmp)
    assert "stage 6 done" in out
    text = (other / "RESULTS.md").read_text()
    assert any(line.startswith("| [lora]") for line in text.splitlines())
    assert not any(line.startswith("| [source]") for line in text.splitlines())
    assert (other / "lora" / "decode_source_test" / "score_cer" / "result.json").exists()
    assert "ngram_weight 0.5" in (other / "lora" / "decode_union" / "rtf").read_text()


def test_sharded_decoding_gives_the_hypotheses_of_one_job(recipe):
    """--inference_nj 3: three jobs of whole batches, merged; byte for byte what one job writes."""
    tmp, _, _ = recipe
    outs = {}
    for nj in ("1", "3"):
        other = tmp / f"exp_nj{nj}"
        (other / "lora").mkdir(parents=True)
        for f in ("config.yaml", "valid.acc.ave.pth", "params.json", "provenance.json"):
            shutil.copy(tmp / "exp" / "lora" / f, other / "lora" / f)
        run(["--stage", "6", "--stop_stage", "6", "--exp_dir", str(other), "--systems", "lora",
             "--llm_dir", str(tmp / "exp" / "llm"), "--ngram_lm", str(tmp / "exp" / "ngram" / "lm.arpa"),
             "--decode_args", "--beam_size 2 --batch_size 4 --max_new_tokens 48", "--inference_nj", nj], tmp)
        outs[nj] = other / "lora" / "decode_union"
    assert len(list((outs["3"] / "split").glob("decode.*.log"))) == 3
    union = [line.split()[0] for line in (tmp / "exp_nj3" / "decode_inputs" / "feats.scp").read_text().splitlines()]
    first_job = (outs["3"] / "split" / "keys.1").read_text().split()
    assert first_job == [k for i, k in enumerate(union) if (i // 4) % 3 == 0]  # batches 1, 4, 7, ... of 4
    names = sorted(p.name for p in (outs["1"] / "1best_recog").iterdir())
    assert "text" in names and names == sorted(p.name for p in (outs["3"] / "1best_recog").iterdir())
    for name in names:
        assert (outs["3"] / "1best_recog" / name).read_bytes() == (outs["1"] / "1best_recog" / name).read_bytes(), name
    rtf = dict(line.split() for line in (outs["3"] / "rtf").read_text().splitlines())
    assert rtf["jobs"] == "3" and rtf["utterances"] == str(len((outs["1"] / "1best_recog" / "text").read_text().splitlines()))


def test_decoding_reads_the_test_sets_longest_utterance_first(recipe):
    """Stage 6's union of the test sets lists the utterances longest first, and every table of it
    (features, accents, encoder outputs) in that one order."""
    tmp, _, _ = recipe
    union = tmp / "exp" / "decode_inputs"
    feats = tmp / "dump" / "fbank_pitch"
    length = {}
    for shape in feats.glob("*/speech_shape"):
        if shape.parent.name.startswith("test_") or shape.parent.name == "source_test":
            length.update((k, int(v.split(",")[0])) for k, v in (line.split() for line in shape.read_text().splitlines()))
    keys = (union / "keys").read_text().split()
    assert sorted(keys) == sorted(length) and len(set(length.values())) > 1
    assert keys == sorted(keys, key=lambda k: (-length[k], k))
    for table in ("feats.scp", "utt2accent", "encoder_out.scp"):
        assert [line.split()[0] for line in (union / table).read_text().splitlines()] == keys, table


def test_stage_4_with_a_pretrained_model_and_no_source_set_trains_the_head_on_train(recipe):
    """KeSpeech has no source_train: with --pretrained_model, stage 4 writes the encoder outputs
    and trains the accent-ID head on the accent training set alone (--aid_source_utts needs a
    source_train)."""
    tmp, _, _ = recipe
    dump = tmp / "dump_no_source"
    shutil.copytree(tmp / "dump", dump, ignore=shutil.ignore_patterns("source_train*", "train_accent_id"))
    out = run(["--stage", "4", "--stop_stage", "4", "--dump_dir", str(dump), "--exp_dir", str(tmp / "exp_no_source"),
               "--pretrained_model", str(tmp / "exp" / "source" / "valid.acc.ave.pth"),
               "--llm_dir", str(tmp / "exp" / "llm")], tmp)
    assert "stage 4 done" in out and "the accent-ID head's training set" not in out
    log = (tmp / "exp_no_source" / "accent_id" / "train.log").read_text()
    assert f"{dump}/fbank_pitch/train/feats.scp,speech,kaldi_ark" in log
    assert (tmp / "exp_no_source" / "accent_id" / "valid.acc_aid.ave.pth").is_file()


def test_settings_are_tuned_on_dev_in_their_own_dir_with_the_accent_head_of_step_3(recipe):
    """local/tune_dev.py: stage 5 per setting and rate into --out_dir (hdmole reads the accent head
    of step 3 through --aid_model), then dev decoded as stage 6 decodes (the recipe's n-gram LM
    fused), scored, and the table of dev CERs; no tables of stage 6 in --out_dir."""
    tmp, _, _ = recipe
    tune = tmp / "tune"
    cmd = [sys.executable, "local/tune_dev.py", "--configs", "conf/finetune_hdmole.yaml",
           "--lrs", "0.004", "--exp_dir", str(tmp / "exp"), "--out_dir", str(tune),
           "--recipe_args", f"--data_dir {tmp / 'data'} --dump_dir {tmp / 'dump'}"]
    p = subprocess.run(cmd, cwd=RECIPE, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "--aid_model" in p.stdout and (tune / "hdmole_lr0.004" / "valid.acc.best.pth").is_file()
    run = tune / "hdmole_lr0.004"
    score = json.loads((run / "decode_dev" / "score_cer" / "result.json").read_text())
    cer = score["cer"]
    assert score["utterances"] == len((tmp / "dump" / "fbank_pitch" / "dev" / "text").read_text().splitlines())
    log = (run / "decode_union" / "decode.log").read_text()
    assert f"--ngram_file {tmp / 'exp' / 'ngram' / 'lm.arpa'}" in log and "--batch_size 64" in log  # as run.sh decodes
    row = next(line for line in (tune / "RESULTS.md").read_text().splitlines() if line.startswith("| hdmole |"))
    assert f"**{100 * cer:.2f} (" in row, row
    assert not (tune / "plots").exists() and not (tune / "hdmole_lr0.004" / "RESULTS.md").exists()
    assert not (tmp / "exp" / "hdmole_lr0.004").exists()  # nothing written into the recipe's exp dir


# ---------------------------------------------------------------- nothing stale, nothing silent (issue 10)
def result_rows(exp):
    return [line.split("]")[0][3:] for line in (exp / "RESULTS.md").read_text().splitlines() if line.startswith("| [")]


def test_subset_decode_keeps_every_system_in_results(recipe):
    """Case 4: stage 6 with --systems lora replaced the all-systems table with a one-system one."""
    tmp, _, _ = recipe
    before = result_rows(tmp / "exp")
    out = run(["--stage", "6", "--stop_stage", "6", "--systems", "lora"], tmp)
    assert "lora decoding: done, skipped" in out
    assert result_rows(tmp / "exp") == before and set(SYSTEMS) <= set(before)


def test_a_decoding_of_fewer_sets_leaves_no_older_set_behind(recipe):
    """--test_sets of one set decoded it anew, while the other sets' scores of the previous decoding
    stayed and were averaged with it in the tables (found in review, session 33)."""
    tmp, _, _ = recipe
    lora = tmp / "exp" / "lora"
    sets = sorted(d.name for d in lora.glob("decode_*") if d.name != "decode_union")
    assert len(sets) > 2
    out = run(["--stage", "6", "--stop_stage", "6", "--systems", "lora", "--test_sets", sets[0][len("decode_"):]], tmp)
    assert f"lora: removed {lora / sets[1]}, made from the decoding this one replaced" in out
    assert sorted(d.name for d in lora.glob("decode_*")) == sorted(["decode_union", sets[0]])
    run(["--stage", "6", "--stop_stage", "6", "--systems", "lora"], tmp)  # every set again, for the tests after
    assert sorted(d.name for d in lora.glob("decode_*") if d.name != "decode_union") == sets


def test_train_seeds_run_every_system_again_and_results_report_the_spread(recipe):
    """Issue 13 item 2: --train_seeds trains each system again with another seed, into its own
    directory, and RESULTS.md reports the mean and spread over the runs."""
    tmp, _, _ = recipe
    out = run(["--stage", "5", "--stop_stage", "6", "--train_configs", "conf/finetune_lora.yaml", "--train_seeds", "1"], tmp)
    assert "lora: done, skipped" in out and "lora_seed1: conf/finetune_lora.yaml" in out
    assert "--seed 1" in (tmp / "exp" / "lora_seed1" / "train.log").read_text().splitlines()[0]
    assert "lora_seed1" not in result_rows(tmp / "exp")  # a seed run is no row of the systems table
    assert (tmp / "exp" / "lora_seed1" / "RESULTS.md").is_file()
    text = (tmp / "exp" / "RESULTS.md").read_text()
    row = next(line for line in text[text.index("## Seeds"):].splitlines() if line.startswith("| lora |"))
    assert row.split("|")[2].strip() == "2"


def test_an_edited_finetune_yaml_is_trained_again(recipe, tmp_path):
    """Case 3: after rank 2 -> 4 in the YAML, stage 5 said 'done, skipped'."""
    tmp, _, _ = recipe
    cfg = tmp_path / "finetune_lora.yaml"
    text = (RECIPE / "conf" / "finetune_lora.yaml").read_text()
    cfg.write_text(text)  # the same content elsewhere is the same input
    assert "lora: done, skipped" in run(["--stage", "5", "--stop_stage", "5", "--train_configs", str(cfg)], tmp)
    assert re.search(r"rank: \d+", text)
    cfg.write_text(re.sub(r"rank: \d+", "rank: 3", text))
    out = run(["--stage", "5", "--stop_stage", "5", "--train_configs", str(cfg)], tmp)
    assert f"lora: redone, because config {cfg} changed (the previous run is kept in" in out
    assert len(list((tmp / "exp").glob("lora.stale-*"))) == 1
    out = run(["--stage", "5", "--stop_stage", "5", "--train_configs", str(cfg)], tmp)
    assert "lora: done, skipped" in out


def test_a_retrained_source_model_is_never_mixed_with_old_adapters(recipe):
    """Case 1: after stage 4 was re-run, stage 5 said 'done, skipped' and stage 6 decoded the old
    adapter on the new base."""
    tmp, _, _ = recipe
    out = run(["--stage", "4", "--stop_stage", "4", "--source_train_args", "--max_epoch 1"], tmp)
    assert "source_encoder: redone, because options changed" in out
    assert re.search(r"source_encoder_tone: redone, because step-1 encoder \S+ changed; options changed", out), out[-3000:]
    assert re.search(r"source: redone, because step-1 encoder \S+ changed; options changed", out)
    # the stored outputs come from the frozen encoder that step 2 keeps: step 1b's
    assert re.search(r"encoder outputs of train: redone, because model \S+/source_encoder_tone/valid.loss.best.pth changed", out), out[-3000:]
    err = run_fails(["--stage", "6", "--stop_stage", "6", "--systems", "mole_topk"], tmp)
    assert re.search(r"the base checkpoint \S+/source/valid.acc.ave.pth \(--init_param of \S+/mole_topk/config.yaml\) "
                     r"has changed since \S+/mole_topk/valid.acc.ave.pth was trained on it", err), err[-2000:]
    out = run(["--stage", "5", "--stop_stage", "5", "--train_configs", "conf/finetune_mole_topk.yaml"], tmp)
    assert re.search(r"mole_topk: redone, because .*source model \S+/source/"
                     r"valid.acc.ave.pth changed", out), out[-2000:]


def test_step_2_settings_in_the_source_config_redo_step_2_only(recipe, tmp_path):
    """Steps 1, 1b and 3 compare the settings they train with (the source config's architecture
    merged with their own YAMLs), so step 2's epochs or batch size in the source config, or the same
    config from another file, redo step 2 alone."""
    tmp, _, _ = recipe
    opts = ["--stage", "4", "--stop_stage", "4", "--source_train_args", "--max_epoch 1"]
    run(opts, tmp)  # whatever an earlier test left: up to date with these options
    text = (RECIPE / "conf" / "train_source.yaml").read_text(encoding="utf-8")
    assert re.search(r"(?m)^batch_size: 16$", text)
    cfg = tmp_path / "train_source.yaml"
    cfg.write_text(text.replace("\nbatch_size: 16\n", "\nbatch_size: 15\n"), encoding="utf-8")
    out = run(opts + ["--source_config", str(cfg)], tmp)
    for step in ("source_encoder", "source_encoder_tone", "accent_id"):
        assert f"{step}: done, skipped" in out, out[-3000:]
    assert f"source: redone, because config {cfg} changed" in out, out[-3000:]
    # a setting of step 1's own YAML redoes step 1 (and so everything after it)
    enc = tmp_path / "train_source_encoder.yaml"
    enc_text = (RECIPE / "conf" / "train_source_encoder.yaml").read_text(encoding="utf-8")
    assert re.search(r"(?m)^grad_clip: 5.0$", enc_text)
    enc.write_text(enc_text.replace("\ngrad_clip: 5.0\n", "\ngrad_clip: 4.0\n"), encoding="utf-8")
    out = run(opts + ["--source_config", str(cfg), "--source_encoder_config", str(enc)], tmp)
    assert re.search(r"source_encoder: redone, because merged config \S+ changed", out), out[-3000:]
    assert re.search(r"source_encoder_tone: redone, because .*step-1 encoder", out), out[-3000:]


def test_changed_data_redoes_features_with_the_reason(recipe):
    """Case 9: stage 2 refused with 'pass --overwrite true', an option run.sh does not have."""
    tmp, _, _ = recipe
    text = tmp / "data" / "dev" / "text"
    lines = text.read_text(encoding="utf-8").splitlines()
    uid, t = lines[0].split(" ", 1)
    lines[0] = f"{uid} {t[::-1]}"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = run(["--stage", "2", "--stop_stage", "2"], tmp)
    assert re.search(r"dump/fbank_pitch/dev: \S*data/dev/text changed since the features were made: redone", out), out[-3000:]
    assert re.search(r"  dev: \d+ utterances \(done\)", out) and re.search(r"  train: \d+ utterances \(skipped", out)
