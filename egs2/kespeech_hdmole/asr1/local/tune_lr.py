#!/usr/bin/env python3
"""Choose each fine-tuning system's learning rate on dev (never on test).

For every learning rate, runs stage 5 of hdmole.sh for the given systems into
<out_dir>/lr<LR>/<system> (from the same source model, with the same data and epochs as the
recipe unless --max_epoch is given), then reads the best valid accuracy of each run from its
train.log and writes <out_dir>/RESULTS.md: one row per system, one column per learning rate,
the best one marked, and the line to put into the system's YAML. Finished runs are skipped
(hdmole.sh's .done files), so an interrupted sweep resumes.

    local/tune_lr.py --configs conf/finetune_full.yaml conf/finetune_lora.yaml conf/finetune_hdmole.yaml \\
        --lrs 0.0005 0.001 0.002 0.004 [--max_epoch 3] [--out_dir exp/tune_lr] [--exp_dir exp]
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

RESULTS = re.compile(r"(\d+)epoch results: .*\[valid\].*?\bacc=([0-9.eE+-]+)")


def best_valid_acc(train_log: Path):
    """(best valid acc, its epoch) from an ESPnet train.log, or None when there is none."""
    if not train_log.is_file():
        return None
    best = None
    for line in train_log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = RESULTS.search(line)
        if m:
            ep, acc = int(m.group(1)), float(m.group(2))
            if best is None or acc > best[0]:
                best = (acc, ep)
    return best


def system_name(cfg: str) -> str:
    return Path(cfg).stem.replace("finetune_", "")


def table(out_dir: Path, configs, lrs) -> str:
    lines = ["# Learning rates chosen on dev", "",
             "Best valid token accuracy (epoch) of each fine-tuning run; the best learning rate of each "
             "system in bold.", "",
             "| system | " + " | ".join(f"lr {lr}" for lr in lrs) + " | chosen |",
             "|---|" + "---:|" * len(lrs) + "---|"]
    for cfg in configs:
        sys_ = system_name(cfg)
        res = {lr: best_valid_acc(out_dir / f"lr{lr}" / sys_ / "train.log") for lr in lrs}
        done = {lr: r for lr, r in res.items() if r is not None}
        pick = max(done, key=lambda lr: done[lr][0]) if done else None
        cells = []
        for lr in lrs:
            r = res[lr]
            cell = "-" if r is None else f"{100 * r[0]:.2f} ({r[1]})"
            cells.append(f"**{cell}**" if lr == pick else cell)
        lines.append(f"| {sys_} | " + " | ".join(cells) + f" | {'-' if pick is None else 'optim_conf.lr: ' + pick} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", required=True, help="fine-tuning YAMLs (stage 5 systems)")
    p.add_argument("--lrs", nargs="+", required=True, help="peak learning rates to try")
    p.add_argument("--max_epoch", type=int, default=None, help="epochs per run (default: the YAML's)")
    p.add_argument("--exp_dir", default="exp", help="the recipe's exp dir (source model, LLM)")
    p.add_argument("--out_dir", default="exp/tune_lr")
    p.add_argument("--pretrained_model", default=None,
                   help="source model (default: <exp_dir>/source/valid.acc.ave.pth)")
    p.add_argument("--llm_dir", default=None, help="the LLM (default: <exp_dir>/llm)")
    p.add_argument("--report_only", action="store_true", help="only (re)write RESULTS.md")
    a = p.parse_args(argv)
    exp_dir, out_dir = Path(a.exp_dir), Path(a.out_dir)
    model = Path(a.pretrained_model or exp_dir / "source" / "valid.acc.ave.pth")
    llm = Path(a.llm_dir or exp_dir / "llm")
    for cfg in a.configs:
        if not Path(cfg).is_file():
            p.error(f"--configs: {cfg} does not exist")
    for lr in a.lrs:
        try:
            float(lr)
        except ValueError:
            p.error(f"--lrs: {lr!r} is not a number")
    if not a.report_only:
        for path, what in ((model, "source model (--pretrained_model)"), (llm, "LLM dir (--llm_dir)")):
            if not path.exists():
                p.error(f"the {what} {path} does not exist: run stages 1-4 first")
        for lr in a.lrs:
            extra = f"--optim_conf lr={lr}" + (f" --max_epoch {a.max_epoch}" if a.max_epoch else "")
            cmd = ["./hdmole.sh", "--stage", "5", "--stop_stage", "5", "--pretrained_model", str(model),
                   "--llm_dir", str(llm), "--exp_dir", str(out_dir / f"lr{lr}"),
                   "--train_configs", " ".join(a.configs), "--train_args", extra]
            print(f"[tune_lr] lr {lr}: {' '.join(cmd)}", flush=True)
            rc = subprocess.call(cmd)
            if rc != 0:
                print(f"[tune_lr] stage 5 failed for lr {lr} (exit {rc}); see {out_dir}/lr{lr}/*/train.log",
                      file=sys.stderr)
                return rc
    out_dir.mkdir(parents=True, exist_ok=True)
    text = table(out_dir, a.configs, a.lrs)
    (out_dir / "RESULTS.md").write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
