"""Running the recipe at --demo_size tiny, for the recipe tests (the ``recipe`` fixture of
conftest.py runs it once per test session, stages 1-6)."""
import os
import subprocess
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1"


def run(args, tmp):
    cmd = ["./run.sh", "--demo_size", "tiny", "--data_dir", str(tmp / "data"), "--dump_dir", str(tmp / "dump"),
           "--exp_dir", str(tmp / "exp")] + args
    env = dict(os.environ, KESPEECH="")
    p = subprocess.run(cmd, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def run_fails(args, tmp):
    cmd = ["./run.sh", "--demo_size", "tiny", "--data_dir", str(tmp / "data"), "--dump_dir", str(tmp / "dump"),
           "--exp_dir", str(tmp / "exp")] + args
    p = subprocess.run(cmd, cwd=RECIPE, env=dict(os.environ, KESPEECH=""), capture_output=True, text=True, timeout=900)
    assert p.returncode != 0, f"{' '.join(cmd)} should have failed:\n{p.stdout[-2000:]}"
    assert "Traceback" not in p.stdout + p.stderr
    return p.stderr
