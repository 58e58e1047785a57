"""local/tune_dev.py: settings chosen on dev (the ladder of conf/tune_dev.yaml, learning rates)."""
import json
import sys
from pathlib import Path

import pytest
import yaml

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1"
sys.path.insert(0, str(RECIPE / "local"))
import tune_dev  # noqa: E402

SHIPPED_LADDERS = ("conf/tune_dev.yaml", "conf/tune_dev_proj.yaml")


def epoch_log(path: Path, accs, active=None):
    path.mkdir(parents=True)
    (path / "train.log").write_text("".join(
        f"[vm] 2026 (trainer:394) INFO: {e}epoch results: [train] loss=1.0, acc=0.99, hdmole_active=9.0, "
        f"[valid] loss_asr=2.0, acc={a}, loss_aid=0.5, acc_aid=0.7"
        + (f", hdmole_active={active[e - 1]}" if active else "") + ", loss=2.0, time=1 s\n"
        for e, a in enumerate(accs, 1)))


def test_best_valid_reads_the_valid_part_of_espnets_epoch_lines(tmp_path):
    epoch_log(tmp_path / "r", [0.30, 0.52, 0.48], active=[3.0, 2.5, 2.0])
    acc, epoch, fields = tune_dev.best_valid(tmp_path / "r" / "train.log")
    assert (acc, epoch) == (0.52, 2)
    assert fields["hdmole_active"] == 2.5 and fields["acc_aid"] == 0.7  # valid's, not train's 9.0 / 0.99
    assert tune_dev.best_valid(tmp_path / "missing.log") is None


def ladder(tmp_path, text):
    p = tmp_path / "ladder.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_bad_ladders_name_the_file_the_setting_and_the_key(tmp_path):
    cases = {
        "settings: [{name: a}]": "settings\\[0\\]: 'config' is required",
        "settings: [{name: a, config: x.yaml, lr: 1}]": "settings\\[0\\]: unknown key\\(s\\) \\['lr'\\]",
        "lrs: [0.1]\nsettings: [{name: a, config: x.yaml}, {name: a, config: y.yaml}]": "settings\\[1\\]: name 'a'",
        "settings: [{name: 'a b', config: x.yaml, lrs: [1]}]": "name 'a b' must be",
        "settings: [{name: a, config: x.yaml}]": "settings\\[0\\]: no learning rates",
        "settings: [{name: a, config: x.yaml, lrs: [1], set: [1]}]": "'set' must be a mapping",
        "lrs: [1]": "no settings",
    }
    for text, msg in cases.items():
        with pytest.raises(ValueError, match=msg) as e:
            tune_dev.load_ladder(ladder(tmp_path, text))
        assert str(tmp_path / "ladder.yaml") in str(e.value)
    s = tune_dev.load_ladder(ladder(tmp_path, f"lrs: [0.1]\nsettings: [{{name: a, config: {tmp_path}/none.yaml}}]"))
    with pytest.raises(ValueError, match="setting a: config .*none.yaml does not exist"):
        tune_dev.check_settings(s)
    (tmp_path / "c.yaml").write_text("optim_conf: {lr: 1}\n")
    s = tune_dev.load_ladder(ladder(tmp_path, f"settings: [{{name: a, config: {tmp_path}/c.yaml, lrs: [fast]}}]"))
    with pytest.raises(ValueError, match="setting a: learning rate 'fast' is not a number"):
        tune_dev.check_settings(s)


def test_a_setting_is_its_yaml_with_overrides_merged_key_by_key_at_each_rate(tmp_path):
    base = tmp_path / "finetune_x.yaml"
    base.write_text(yaml.safe_dump({"adapter_conf": {"rank": 2, "alpha": 4, "output_scale": "expert"},
                                    "optim_conf": {"lr": 0.5, "weight_decay": 0.1}, "max_epoch": 3}))
    (s,) = tune_dev.load_ladder(ladder(tmp_path, f"""
lrs: [0.001, 0.004]
settings:
  - {{name: x_fair, config: {base}, set: {{adapter_conf: {{output_scale: lora}}, routing_optim_conf: {{lr_scale: 0.1}}}}}}
"""))
    out = tune_dev.write_config(s, "0.004", tmp_path / "conf")
    assert out.name == "finetune_x_fair_lr0.004.yaml"  # hdmole.sh names the run x_fair_lr0.004
    conf = yaml.safe_load(out.read_text())
    assert conf["adapter_conf"] == {"rank": 2, "alpha": 4, "output_scale": "lora"}
    assert conf["optim_conf"] == {"lr": 0.004, "weight_decay": 0.1}
    assert conf["routing_optim_conf"] == {"lr_scale": 0.1} and conf["max_epoch"] == 3
    mtime = out.stat().st_mtime_ns
    tune_dev.write_config(s, "0.004", tmp_path / "conf")
    assert out.stat().st_mtime_ns == mtime  # unchanged: hdmole.sh's done marker stays valid


def test_report_marks_each_settings_best_rate_its_gap_and_changes_a_default_only_beyond_the_noise(tmp_path):
    for name in ("lora.yaml", "mix.yaml", "other.yaml"):
        (tmp_path / name).write_text("optim_conf: {lr: 0.002}\n")
    settings = tune_dev.load_ladder(ladder(tmp_path, f"""
lrs: [0.002]
settings:
  - {{name: lora, config: {tmp_path}/lora.yaml, lrs: [0.001, 0.002]}}
  - {{name: mix_a, config: {tmp_path}/mix.yaml, about: "a mixture", set: {{adapter_conf: {{output_scale: lora}}}}}}
  - {{name: mix_b, config: {tmp_path}/mix.yaml, lrs: [0.002, 0.004]}}
  - {{name: mix_c, config: {tmp_path}/mix.yaml, control: true}}
  - {{name: other, config: {tmp_path}/other.yaml}}
  - {{name: other_x, config: {tmp_path}/other.yaml, set: {{max_epoch: 4}}}}
  - {{name: lora_s1, config: {tmp_path}/lora.yaml, seed: 1, control: true, noise_of: lora}}
"""))
    epoch_log(tmp_path / "lora_lr0.001", [0.50, 0.60])
    epoch_log(tmp_path / "lora_lr0.002", [0.55, 0.58])
    epoch_log(tmp_path / "mix_a_lr0.002", [0.56, 0.62], active=[4.0, 3.25])
    epoch_log(tmp_path / "mix_b_lr0.002", [0.40])
    epoch_log(tmp_path / "mix_c_lr0.002", [0.90])  # a control: reported, never chosen
    epoch_log(tmp_path / "other_lr0.002", [0.50])
    epoch_log(tmp_path / "other_x_lr0.002", [0.505])
    epoch_log(tmp_path / "lora_s1_lr0.002", [0.585])  # seed 1: one gap |58.5 - 58| at 0.002, margin 2 x 0.5
    text = tune_dev.report(tmp_path, settings, "acc")
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in text.splitlines() if r.startswith("| ") and "lr 0.001" not in r}
    assert rows["lora"] == ["", "**60.00 (2)**", "58.00 (2)", "", "+0.00", "-"]
    assert rows["mix_a"] == ["a mixture", "", "**62.00 (2)**", "", "+2.00", "3.25"]
    assert f"- `mix_a`: `{tmp_path}/mix.yaml` + adapter_conf.output_scale: lora" in text
    assert rows["mix_b"] == ["", "", "**40.00 (1)**", "-", "-20.00", "-"]
    assert rows["lora_s1, seed 1"][2] == "**58.50 (1)**" and rows["mix_c"][2] == "**90.00 (1)**"
    assert "Noise margin: 1.00 points" in text
    # beyond the noise: change; within it: keep the YAML as it is
    assert (f"- `{tmp_path}/lora.yaml`: **change** to `lora` at lr 0.001 (60.00%: optim_conf.lr: 0.001): +2.00 "
            "better than the YAML as it is (`lora` at lr 0.002, 58.00%)") in text
    assert f"- `{tmp_path}/mix.yaml`: **change** to `mix_a` at lr 0.002 (62.00%: adapter_conf.output_scale: lora" in text
    assert (f"- `{tmp_path}/other.yaml`: **keep** the YAML as it is (`other` at lr 0.002, 50.00%); the best, "
            "`other_x` at lr 0.002 (50.50%: max_epoch: 4, optim_conf.lr: 0.002), is within the noise") in text
    assert "- `- `" not in text and f"`{tmp_path}/mix.yaml`" in text
    (tmp_path / "mix.yaml").write_text("optim_conf: {lr: 0.002}\nadapter_conf: {output_scale: lora}\n")
    assert (f"- `{tmp_path}/mix.yaml`: **keep** the YAML as it is (`mix_a` at lr 0.002, 62.00%): the best on dev"
            in tune_dev.report(tmp_path, settings, "acc"))
    (tmp_path / "lora_lr0.001" / ".done").write_text('{"code": {"commit": "%s", "clean": true}}' % ("a" * 40))
    assert "`aaaaaaa (clean)`: 1 outputs (lora_lr0.001)" in tune_dev.report(tmp_path, settings, "acc")  # below --out_dir
    with pytest.raises(ValueError, match="noise_of 'nobody' names no setting"):
        tune_dev.load_ladder(ladder(tmp_path, f"lrs: [1]\nsettings: [{{name: a, config: x, noise_of: nobody}}]"))


def decoded(run: Path, cer: float, accs=(0.5,)):
    epoch_log(run, list(accs))
    (run / "decode_dev" / "score_cer").mkdir(parents=True)
    (run / "decode_dev" / "score_cer" / "result.json").write_text(json.dumps({"cer": cer, "utterances": 9}))


def test_by_dev_cer_the_lowest_wins_and_a_default_changes_only_beyond_the_noise(tmp_path):
    for name in ("lora.yaml", "mix.yaml"):
        (tmp_path / name).write_text("optim_conf: {lr: 0.002}\n")
    settings = tune_dev.load_ladder(ladder(tmp_path, f"""
lrs: [0.002]
settings:
  - {{name: lora, config: {tmp_path}/lora.yaml, lrs: [0.001, 0.002]}}
  - {{name: mix, config: {tmp_path}/mix.yaml, lrs: [0.002, 0.004]}}
  - {{name: mix_x, config: {tmp_path}/mix.yaml, set: {{max_epoch: 4}}}}
  - {{name: lora_s1, config: {tmp_path}/lora.yaml, seed: 1, control: true, noise_of: lora}}
"""))
    # token accuracy would pick lora at 0.001 and mix at 0.004; the dev CERs pick the others
    decoded(tmp_path / "lora_lr0.001", 0.33, accs=(0.60,))
    decoded(tmp_path / "lora_lr0.002", 0.30, accs=(0.40, 0.55))
    decoded(tmp_path / "mix_lr0.002", 0.28)
    decoded(tmp_path / "mix_lr0.004", 0.285, accs=(0.70,))
    decoded(tmp_path / "mix_x_lr0.002", 0.25)
    decoded(tmp_path / "lora_s1_lr0.002", 0.305)  # seed 1: one gap |30.5 - 30| = 0.5, the margin 2 x 0.5
    epoch_log(tmp_path / "other_lr0.002", [0.9])  # trained, not decoded: no figure
    text = tune_dev.report(tmp_path, settings, "cer")
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in text.splitlines() if r.startswith("| ") and "lr 0.001" not in r}
    assert "Dev CER in % of each fine-tuning run" in text
    assert rows["lora"] == ["", "33.00 (1)", "**30.00 (2)**", "", "+0.00", "-"]
    assert rows["mix"] == ["", "", "**28.00 (1)**", "28.50 (1)", "-2.00", "-"]
    assert "Noise margin: 1.00 points" in text
    assert (f"- `{tmp_path}/lora.yaml`: **keep** the YAML as it is (`lora` at lr 0.002, CER 30.00%): the best on dev"
            in text)
    assert (f"- `{tmp_path}/mix.yaml`: **change** to `mix_x` at lr 0.002 (CER 25.00%: max_epoch: 4, optim_conf.lr: "
            f"0.002): +3.00 better than the YAML as it is (`mix` at lr 0.002, CER 28.00%)") in text
    (tmp_path / "mix_x_lr0.002" / "decode_dev" / "score_cer" / "result.json").write_text(json.dumps({"cer": 0.275}))
    assert "the best, `mix_x` at lr 0.002 (CER 27.50%: max_epoch: 4, optim_conf.lr: 0.002), is within the noise" in \
        tune_dev.report(tmp_path, settings, "cer")
    # the noise pair is compared at the rate both ran, not best against best (|29.5 - 30.5| would be 1)
    (tmp_path / "lora_lr0.001" / "decode_dev" / "score_cer" / "result.json").write_text(json.dumps({"cer": 0.295}))
    assert "Noise margin: 1.00 points" in tune_dev.report(tmp_path, settings, "cer")
    (tmp_path / "mix_lr0.002" / "decode_dev" / "score_cer" / "result.json").unlink()  # not decoded (yet)
    assert "| mix |  |  | - | **28.50 (1)** |" in tune_dev.report(tmp_path, settings, "cer")


def test_the_noise_margin_is_twice_the_root_mean_square_of_every_pairs_gap(tmp_path):
    assert tune_dev.noise_margin([]) == 0.0
    assert tune_dev.noise_margin([0.1, 0.7]) == pytest.approx(1.0)  # 2 x sqrt((0.01 + 0.49) / 2)
    for name in ("lora.yaml", "mix.yaml"):
        (tmp_path / name).write_text("optim_conf: {lr: 0.002}\n")
    settings = tune_dev.load_ladder(ladder(tmp_path, f"""
lrs: [0.002]
settings:
  - {{name: lora, config: {tmp_path}/lora.yaml}}
  - {{name: mix, config: {tmp_path}/mix.yaml}}
  - {{name: mix_x, config: {tmp_path}/mix.yaml, set: {{max_epoch: 4}}}}
  - {{name: lora_s1, config: {tmp_path}/lora.yaml, seed: 1, control: true, noise_of: lora}}
  - {{name: mix_s1, config: {tmp_path}/mix.yaml, seed: 1, control: true, noise_of: mix}}
"""))
    decoded(tmp_path / "lora_lr0.002", 0.300)
    decoded(tmp_path / "lora_s1_lr0.002", 0.301)
    decoded(tmp_path / "mix_lr0.002", 0.280)
    decoded(tmp_path / "mix_s1_lr0.002", 0.273)
    decoded(tmp_path / "mix_x_lr0.002", 0.271)  # 0.9 better than mix: beyond the larger gap (0.7), within the margin
    text = tune_dev.report(tmp_path, settings, "cer")
    assert "Noise margin: 1.00 points, twice the root mean square" in text and "(2 gap(s): 0.10, 0.70)" in text
    assert "the best, `mix_x` at lr 0.002 (CER 27.10%: max_epoch: 4, optim_conf.lr: 0.002), is within the noise" in text


def test_the_shipped_ladder_loads_and_names_existing_configs(monkeypatch):
    monkeypatch.chdir(RECIPE)
    settings = tune_dev.load_ladder(Path("conf/tune_dev.yaml"))
    tune_dev.check_settings(settings)
    names = [s["name"] for s in settings]
    assert names[0] == "lora" and "uniform" in names and "hdmole" in names
    uniform = next(s for s in settings if s["name"] == "uniform")
    assert uniform["set"]["adapter_conf"] == {"output_scale": "lora", "router_init_std": 0.0} and uniform["control"]


def test_noise_seed_lrs_derives_the_settings_second_seed(tmp_path):
    # the control is derived from its setting, so that it cannot drift from it: same YAML and
    # overrides, seed 1, at the rates asked for, after every setting
    path = ladder(tmp_path, "lrs: [0.002]\nsettings:\n"
                  "  - {name: mix, config: m.yaml, about: mixture, set: {a: {b: 1}}, lrs: [0.001, 0.002], "
                  "noise_seed_lrs: [0.002]}\n  - {name: lora, config: l.yaml}\n")
    settings = tune_dev.load_ladder(path)
    assert [s["name"] for s in settings] == ["mix", "lora", "mix_seed1"]
    mix, control = settings[0], settings[2]
    assert control == dict(mix, name="mix_seed1", about="mixture (noise control)", lrs=["0.002"], seed=1,
                           control=True, noise_of="mix")
    control["set"]["a"]["b"] = 2  # a copy, not the setting's own overrides
    assert mix["set"] == {"a": {"b": 1}}
    with pytest.raises(ValueError, match=r"settings\[0\]: noise_seed_lrs must list rates the setting runs"):
        tune_dev.load_ladder(ladder(tmp_path, "lrs: [0.002]\nsettings: [{name: a, config: x, noise_seed_lrs: [0.004]}]"))
    with pytest.raises(ValueError, match="the setting's own seed"):
        tune_dev.load_ladder(ladder(tmp_path, "lrs: [1]\nsettings: [{name: a, config: x, seed: 1, noise_seed_lrs: [1]}]"))
    with pytest.raises(ValueError, match="listed twice"):
        tune_dev.load_ladder(ladder(tmp_path, "lrs: [1]\nsettings: [{name: a, config: x, lrs: [1, 1]}]"))
    with pytest.raises(ValueError, match="its noise control's name 'a_seed1' is taken"):
        tune_dev.load_ladder(ladder(tmp_path, "lrs: [1]\nsettings: [{name: a, config: x, noise_seed_lrs: [1]}, "
                                    "{name: a_seed1, config: x}]"))


@pytest.mark.parametrize("ladder_path", SHIPPED_LADDERS)
def test_every_yaml_a_shipped_ladder_tunes_has_a_seed_noise_control_of_its_run_as_it_is(monkeypatch, ladder_path):
    # the noise margin is measured where the decisions are made: each tuned YAML's run as it is
    # (the run a best setting must beat) has a second seed, at least 3 seed pairs per ladder
    monkeypatch.chdir(RECIPE)
    settings = tune_dev.load_ladder(Path(ladder_path))
    controls = {(s["noise_of"], lr) for s in settings if s["control"] and s["seed"] == tune_dev.NOISE_SEED
                for lr in s["lrs"]}
    assert len(controls) >= 3, f"{ladder_path}: fewer than 3 seed pairs measure the noise"
    for config in {s["config"] for s in settings if not s["control"]}:
        as_is = [(s["name"], lr) for s in settings if s["config"] == config and not s["control"] and s["seed"] == 0
                 for lr in s["lrs"] if tune_dev.is_current(s, lr)]
        assert any(run in controls for run in as_is), f"{ladder_path}: {config} as it is ({as_is}) has no second seed"


@pytest.mark.parametrize("ladder_path", SHIPPED_LADDERS)
def test_every_shipped_yaml_of_a_ladder_is_one_of_its_runs_as_it_is(monkeypatch, ladder_path):
    # a YAML whose own default a rung leaves unset would give that rung another meaning (e.g. the
    # 'threshold' rung inheriting finetune_hdmole_nohier.yaml's slow routers), and one that no run
    # equals could never be kept: every rung of a mixture names both router-rate keys, and every
    # YAML the ladder tunes is one of its runs exactly
    monkeypatch.chdir(RECIPE)
    settings = tune_dev.load_ladder(Path(ladder_path))
    for s in settings:
        base = yaml.safe_load(Path(s["config"]).read_text(encoding="utf-8"))
        if base.get("adapter") == "hdmole" and s["set"]:
            assert set(s["set"].get("routing_optim_conf", {})) == {"lr_scale", "freeze_steps"}, s["name"]
    for config in {s["config"] for s in settings}:
        runs = [(s["name"], lr) for s in settings if s["config"] == config and not s["control"] and s["seed"] == 0
                for lr in s["lrs"] if tune_dev.is_current(s, lr)]
        assert runs, f"{ladder_path}: no run is {config} as it is"


def test_every_fine_tuning_system_of_the_recipe_is_tuned_by_a_shipped_ladder(monkeypatch):
    # a baseline of the claims (e.g. full fine-tuning) left at an untuned rate would compare a
    # tuned mixture with an untuned system: every stage-5 YAML is a chosen (non-control) setting
    # of one of the ladders, at more than one rate
    monkeypatch.chdir(RECIPE)
    tuned = {}
    for ladder in SHIPPED_LADDERS:
        for s in tune_dev.load_ladder(Path(ladder)):
            if not s["control"] and s["seed"] == 0:
                tuned.setdefault(Path(s["config"]).name, set()).update(s["lrs"])
    systems = sorted(p.name for p in Path("conf/tuning").glob("finetune_*.yaml"))
    assert "finetune_full.yaml" in systems and "finetune_hdmole.yaml" in systems
    for name in systems:
        assert len(tuned.get(name, ())) > 1, f"{name}: no shipped ladder tunes its rate on dev"
