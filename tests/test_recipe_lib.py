"""Helpers of the recipe's local/recipe_lib.sh."""
import re
import shlex
import subprocess
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local" / "recipe_lib.sh"


def test_shell_words_round_trips_through_shlex_in_any_locale():
    """hdmole.sh passes model_info's options to the training process as one string
    (--model_info_args), which Python splits with shlex: every argument comes back as it was,
    also non-ASCII paths under the C locale (where bash's printf %q writes $'...')."""
    args = ["plain", "two words", "it's", 'say "hi"', "$HOME", "back\\slash", "", "ünï/códe dir", "a'b'c"]
    for locale in ("C", "C.UTF-8"):
        out = subprocess.run(["bash", "-c", f'. "{LIB}"; shell_words "$@"', "bash", *args],
                             capture_output=True, text=True, env={"LC_ALL": locale, "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        assert shlex.split(out.stdout) == args, (locale, out.stdout)


def test_a_skip_of_an_output_made_by_other_code_says_so_and_how_to_redo_it(tmp_path):
    """up_to_date keeps an output whose inputs are unchanged; when local/stage_marker.py says other
    code made it, the log line says which and how to redo it (here the marker's verdict is given)."""
    verdict = "done: made by code bbbbbbb (clean); since then 1 file the results depend on has changed (setup.py)"
    script = f'''set -euo pipefail; . "{LIB}"; verbose=false; cache_dir={tmp_path}/cache
marker() {{ echo "$VERDICT"; }}; python=marker
if up_to_date {tmp_path}/exp/lora lora keep --file x; then echo kept; fi
'''
    for said, line in (("done", "lora: done, skipped\n"),
                       (verdict, f"lora: done, skipped, but {verdict[6:]}: remove {tmp_path}/exp/lora to redo it "
                                 "with this code\n")):
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                             env={"VERDICT": said, "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0 and out.stdout.endswith("kept\n"), out.stderr
        assert (out.stdout + out.stderr).count(line) == 1, out.stdout + out.stderr


def _run_jobs(script: str, tmp_path: Path):
    """Runs SCRIPT after recipe_lib.sh with sys_jobs=2; job NAME:SECONDS:RC appends 'start NAME' and
    'end NAME' to tmp_path/events and exits with RC."""
    prelude = f'''set -euo pipefail; . "{LIB}"; sys_jobs=2; verbose=false
ev={tmp_path}/events; : > "$ev"
job() {{ local n=${{1%%:*}} r=${{1#*:}}; echo "start $n" >> "$ev"; sleep "${{r%%:*}}"; echo "end $n" >> "$ev"; return "${{r#*:}}"; }}
'''
    out = subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=60)
    return out, (tmp_path / "events").read_text().split("\n")[:-1]


def test_run_jobs_counts_a_busy_background_job_as_one_of_its_slots(tmp_path):
    """Stage 4's step 3 may still train when stage 5 starts (busy_pids): the systems start on the
    other slot only, one at a time, until it ends."""
    out, events = _run_jobs('job head:2:0 & busy_pids=("$!"); run_jobs job a:0.8:0 b:0.8:0 c:0.8:0 d:0.1:0; echo ok', tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    # while the head trains (2 s), a, b and c run one after the other on the free slot; d starts
    # on the head's slot once it has ended, beside c
    assert events.index("end a") < events.index("start b") < events.index("end b") < events.index("start c")
    assert events.index("start c") < events.index("end head") < events.index("start d") < events.index("end c")


def test_run_jobs_fails_when_the_busy_job_failed_even_before_it_started(tmp_path):
    """A busy job that ended (here: failed) while the shell ran something else is still collected:
    its status counts, and nothing waits for it forever."""
    out, _ = _run_jobs('job head:0:3 & busy_pids=("$!"); sleep 0.5; run_jobs job a:0.1:0 b:0.1:0; echo ok', tmp_path)
    assert out.returncode != 0 and "ok" not in out.stdout
    assert "job failed for at least one of" in out.stderr
    out, events = _run_jobs('job head:0:0 & busy_pids=("$!"); sleep 0.5; run_jobs job a:0.3:0 b:0.3:0; echo ok', tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert events.index("start b") < events.index("end a")  # the finished head holds no slot: both at once


SOURCE_MODEL = LIB.parent / "recipe_source_model.sh"


def _stage4(script: str, tmp_path: Path):
    """Runs SCRIPT after recipe_lib.sh and recipe_source_model.sh, with write_stage4_enc_out
    replaced by WRITE (a shell command) and exp_dir/cache_dir under tmp_path."""
    prelude = f'''set -euo pipefail; . "{LIB}"; verbose=false; exp_dir={tmp_path}/exp; cache_dir={tmp_path}/cache
mkdir -p "$exp_dir" "$cache_dir"; . "{SOURCE_MODEL}"
write_stage4_enc_out() {{ eval "$WRITE"; }}
'''
    return subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=60)


def test_step_2_waits_for_the_encoder_outputs_step_3_writes_and_never_forever(tmp_path):
    """Side by side, step 3's job writes the encoder outputs of train and dev, and step 2 waits
    for them after training: until they are written, and no longer once their writing failed."""
    out = _stage4('WRITE="sleep 1; echo written >> $exp_dir/events"; stage4_enc_out_for_step3 & '
                  'sleep 0.2; wait_for_stage4_enc_out; echo waited >> "$exp_dir/events"; wait', tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "exp" / "events").read_text().split() == ["written", "waited"]
    assert "step 2 waits for step 3's job" in out.stdout + out.stderr
    out = _stage4('WRITE="sleep 0.5; die cannot encode"; stage4_enc_out_for_step3 & '
                  'wait_for_stage4_enc_out; echo waited', tmp_path / "failing")
    assert out.returncode != 0 and "waited" not in out.stdout
    assert "could not write the encoder outputs of train and dev" in out.stderr


def test_a_decoding_in_stage_5_waits_for_its_system_and_ends_when_its_training_failed(tmp_path):
    """Stage 5's decoding jobs (local/recipe_decode.sh): a system is decoded once its training has
    ended, and not at all (without waiting forever) when its training or the decoding inputs failed."""
    decode = LIB.parent / "recipe_decode.sh"
    prelude = f'''set -euo pipefail; . "{LIB}"; verbose=false; exp_dir={tmp_path}/exp; cache_dir={tmp_path}/cache
mkdir -p "$exp_dir" "$cache_dir"; . "{decode}"
decode_sets() {{ echo test_a; }}; decode_opts() {{ :; }}
decode_system() {{ echo "decoded $1" >> "$exp_dir/events"; }}
'''

    def run_bash(script):
        return subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=60)

    out = run_bash('touch "$stage5_inputs_done"; stage5_decode_job lora & sleep 1; echo trained >> "$exp_dir/events"; '
                   'touch "$(stage5_trained lora)"; wait "$!"; stage5_decode_job source')
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "exp" / "events").read_text().splitlines() == ["trained", "decoded lora", "decoded source"]
    out = run_bash('rm -f "$exp_dir/events"; touch "$stage5_inputs_done"; (sleep 0.5; touch "$(stage5_trained full).failed") & '
                   'stage5_decode_job full')
    assert out.returncode != 0 and "stage 5 does not decode full: its training failed" in out.stderr
    out = run_bash('rm -f "$stage5_inputs_done"; touch "$stage5_inputs_done.failed"; stage5_decode_job source')
    assert out.returncode != 0 and "the decoding inputs could not be written" in out.stderr
    assert not (tmp_path / "exp" / "events").exists()


def test_several_gpus_train_with_one_process_each():
    """ESPnet's --ngpu N > 1 alone runs one process with DataParallel (its --multiprocessing_distributed
    defaults to false), which the HDMoLE layers refuse: the recipe asks for one process per GPU."""
    opts = LIB.parent / "recipe_train_opts.sh"
    script = f'. "{opts}"; llm_dir_eff=L; data_dir=D; feats=F; feats_type=fbank; whisper_dir=""; seed=0; ngpu=$1; common_model_opts'
    for ngpu, want in (("0", False), ("1", False), ("2", True)):
        out = subprocess.run(["bash", "-c", script, "bash", ngpu], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin"})
        assert ("--multiprocessing_distributed true" in out.stdout) == want, (ngpu, out.stdout, out.stderr)


def _run_sh(tmp_path: Path, *args: str) -> list:
    """run.sh with a stand-in hdmole.sh that prints its arguments, one a line."""
    (tmp_path / "run.sh").write_text((LIB.parents[1] / "run.sh").read_text())
    (tmp_path / "hdmole.sh").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    (tmp_path / "hdmole.sh").chmod(0o755)
    out = subprocess.run(["bash", str(tmp_path / "run.sh"), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_run_sh_trains_briefly_at_tiny_in_either_option_form_and_keeps_the_users_training_args(tmp_path):
    """run.sh shortened the training only for an argument that is exactly 'tiny' (not --demo_size=tiny),
    and a user's --train_args replaced the shortening instead of adding to it."""
    for form in (["--demo_size", "tiny"], ["--demo_size=tiny"]):
        got = _run_sh(tmp_path, *form, "--train_args", "--ngpu 0")
        assert got[-4:] == ["--source_train_args", "--max_epoch 2", "--train_args", "--max_epoch 1 --ngpu 0"], got
    got = _run_sh(tmp_path, "--demo-size", "tiny", "--train-args=--ngpu 0", "--stage", "5")  # hdmole.sh's dash forms
    assert got[-6:] == ["--stage", "5", "--source_train_args", "--max_epoch 2", "--train_args", "--max_epoch 1 --ngpu 0"], got
    got = _run_sh(tmp_path, "--demo_size", "small", "--train_args", "--ngpu 0")
    assert got[-2:] == ["--train_args", "--ngpu 0"] and "--max_epoch 1" not in got
    out = subprocess.run(["bash", str(tmp_path / "run.sh"), "--demo_size", "tiny", "--train_args"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "option --train_args needs a value" in out.stderr


def test_run_sh_help_gives_what_it_passes_and_every_line_of_each_setting(tmp_path):
    """--help printed the first comment line of each setting only, and hdmole.sh's own default of
    --decode_args, not the one run.sh passes."""
    recipe = LIB.parents[1]
    out = subprocess.run(["./run.sh", "--help"], cwd=recipe, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    run_sh = (recipe / "run.sh").read_text()
    decode_args = re.search(r'^decode_args="(.*)"', run_sh, re.M).group(1)
    assert f'--decode_args "{decode_args}"' in out.stdout
    hdmole = (recipe / "hdmole.sh").read_text()
    continued = [line.strip()[2:] for line in hdmole.splitlines() if re.match(r"^ {10,}# ", line)]
    assert len(continued) > 20 and all(c in out.stdout for c in continued)


def test_a_merge_that_fails_stops_the_job_even_where_set_e_does_not_hold(tmp_path):
    """Stage 5's jobs run under run_marked's `if ( ... )`, where bash ignores set -e: an unchecked
    failing merge went on with the previous merged config. merge_config stops with the tool's ERROR."""
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1\n")
    script = (f'set -euo pipefail; . "{LIB}"; verbose=false; python="{sys.executable}"\n'
              f'job() {{ merge_config "{bad}" "{bad}" "{tmp_path}/out.yaml"; echo "went on"; }}\n'
              'if ( job ); then echo "job ok"; else echo "job failed"; fi')
    out = subprocess.run(["bash", "-c", script], cwd=LIB.parents[1], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["job", "failed"], out.stdout
    assert f"ERROR: {bad}:3:1: not valid YAML" in out.stderr and not (tmp_path / "out.yaml").exists()
