#!/usr/bin/env python3
"""Choose the fine-tuning systems' settings on dev (never on test): learning rates and any other
YAML key, e.g. the dev ladder of conf/tune_dev.yaml.

A setting is a fine-tuning YAML plus overrides (``set``: keys merged into it, dicts key by key) at
one or more learning rates and one seed. For every setting and rate this writes
<out_dir>/conf/finetune_<setting>_lr<rate>.yaml and runs stage 5 of the recipe on it into
<out_dir>/<setting>_lr<rate> (one run.sh call per seed; its systems run --sys_jobs at a time),
all from the same source model, with the same data, epochs and selection rule as the recipe
(run.sh, so with its decoding options too). Each run is judged by its --criterion on dev:
  cer  (default) its dev CER in %: the run decodes dev and is scored as stage 6 decodes and
       scores the test sets (run.sh --stop_stage 6 --test_sets dev --reports false: beam search
       with the n-gram LM fused, the checkpoint stage 6 decodes), the metric the tables report;
  acc  its best valid token accuracy in % from its train.log (ESPnet's valid.acc, teacher forced:
       cheaper, no decoding, but on the demo it ranked LoRA above the mixtures with a global
       router while their dev CERs, as their test CERs, ranked them below).
Then it writes <out_dir>/RESULTS.md: one row per setting, one column per rate, the best of each
setting in bold, its difference from the reference setting (the first one), and for each
fine-tuning YAML the setting and rate that did best on dev. Finished runs and decodings are
skipped (hdmole.sh's done markers), so an interrupted sweep resumes.

    local/tune_dev.py --ladder conf/tune_dev.yaml [--out_dir exp/tune_dev] [--exp_dir exp] \\
        [--recipe_args "--data_dir data --dump_dir dump"]
    local/tune_dev.py --configs conf/finetune_lora.yaml conf/finetune_hdmole.yaml --lrs 0.001 0.002 0.004

A ladder YAML: ``lrs`` (the default rates), ``settings``: a list of {name, config, about, set, lrs,
seed, control, noise_of, noise_seed_lrs}; ``name`` and ``config`` are required; a ``control: true``
setting (e.g. one that must equal another) is reported but never chosen as a YAML's best;
``noise_of: OTHER`` marks a setting that differs from OTHER only by chance (another seed, an
equivalent form); ``noise_seed_lrs: [rates]`` adds such a control for the setting itself,
<name>_seed1: its YAML and overrides run again with seed 1 at those rates (after the settings).
Each such pair's gap, at a rate both ran, is one draw of the difference between two runs that differ by chance; the
noise margin is twice their root mean square (about a 95% band for such a difference, and steadier
than the largest gap of a single pair). A YAML's default changes only when its best setting beats
the YAML as it is (the run whose settings and rate equal it) by more than that margin.
"""
import argparse
import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import code_record  # noqa: E402

CRITERIA = ("cer", "acc")
RESULTS = re.compile(r"(\d+)epoch results: .*\[valid\](.*)$")
FIELD = re.compile(r"\b(\w+)=([0-9.eE+-]+)")
SETTING_KEYS = {"name", "config", "about", "set", "lrs", "seed", "control", "noise_of", "noise_seed_lrs"}
NOISE_SEED = 1  # the seed of the noise controls that ``noise_seed_lrs`` derives
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def best_valid(train_log: Path):
    """(best valid acc, its epoch, that epoch's valid fields) from an ESPnet train.log, or None."""
    if not train_log.is_file():
        return None
    best = None
    for line in train_log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = RESULTS.search(line)
        if m:
            fields = {k: float(v) for k, v in FIELD.findall(m.group(2))}
            if "acc" in fields and (best is None or fields["acc"] > best[0]):
                best = (fields["acc"], int(m.group(1)), fields)
    return best


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_ladder(path: Path) -> list:
    """The settings of a ladder YAML, checked; a ValueError names the file, setting and key."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    lrs = [str(x) for x in doc.get("lrs", [])]
    settings, seen, controls = [], set(), []
    for i, s in enumerate(doc.get("settings") or []):
        where = f"{path}: settings[{i}]"
        if not isinstance(s, dict):
            raise ValueError(f"{where}: expected a mapping with name and config, got {s!r}")
        unknown = sorted(set(s) - SETTING_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(SETTING_KEYS)}")
        for k in ("name", "config"):
            if k not in s:
                raise ValueError(f"{where}: '{k}' is required")
        if not NAME.match(str(s["name"])) or s["name"] in seen:
            raise ValueError(f"{where}: name {s['name']!r} must be unique and made of letters, digits, _ and -")
        seen.add(s["name"])
        if not isinstance(s.get("set", {}), dict):
            raise ValueError(f"{where}: 'set' must be a mapping of YAML keys, got {s['set']!r}")
        rates = [str(x) for x in s.get("lrs", lrs)]
        if not rates:
            raise ValueError(f"{where}: no learning rates (give 'lrs' in the setting or at the top)")
        if len(set(rates)) < len(rates):
            raise ValueError(f"{where}: a learning rate is listed twice in {rates}")
        settings.append({"name": str(s["name"]), "config": str(s["config"]), "about": str(s.get("about", "")),
                         "set": s.get("set", {}), "lrs": rates, "seed": int(s.get("seed", 0)),
                         "control": bool(s.get("control", False)), "noise_of": s.get("noise_of")})
        if "noise_seed_lrs" in s:
            noise_lrs = s["noise_seed_lrs"]
            if not isinstance(noise_lrs, list) or not noise_lrs or not set(map(str, noise_lrs)) <= set(rates) \
                    or len(set(map(str, noise_lrs))) < len(noise_lrs):
                raise ValueError(f"{where}: noise_seed_lrs must list rates the setting runs ({rates}), each once, "
                                 f"got {noise_lrs!r}")
            if settings[-1]["seed"] == NOISE_SEED:
                raise ValueError(f"{where}: noise_seed_lrs asks for a second run with seed {NOISE_SEED}, "
                                 f"the setting's own seed")
            controls.append((where, noise_control(settings[-1], [str(x) for x in noise_lrs])))
    for where, c in controls:  # after the settings, in their order
        if c["name"] in seen:
            raise ValueError(f"{where}: its noise control's name {c['name']!r} is taken by another setting")
        seen.add(c["name"])
        settings.append(c)
    if not settings:
        raise ValueError(f"{path}: no settings")
    for i, s in enumerate(settings):
        if s["noise_of"] is not None and s["noise_of"] not in seen:
            raise ValueError(f"{path}: settings[{i}]: noise_of {s['noise_of']!r} names no setting")
    return settings


def noise_control(setting: dict, lrs: list) -> dict:
    """The noise control ``noise_seed_lrs`` asks of a setting: the same YAML and overrides run
    again with seed NOISE_SEED at those rates, named <name>_seed<NOISE_SEED>. Derived, never
    copied by hand: a copy left behind when its setting changes would put a real difference into
    the noise margin."""
    return dict(copy.deepcopy(setting), name=f"{setting['name']}_seed{NOISE_SEED}", lrs=lrs, seed=NOISE_SEED,
                about=f"{setting['about']} (noise control)".lstrip(), control=True, noise_of=setting["name"])


def check_settings(settings: list) -> None:
    for s in settings:
        if not Path(s["config"]).is_file():
            raise ValueError(f"setting {s['name']}: config {s['config']} does not exist")
        for lr in s["lrs"]:
            try:
                float(lr)
            except ValueError:
                raise ValueError(f"setting {s['name']}: learning rate {lr!r} is not a number") from None


def run_name(setting: dict, lr: str) -> str:
    return f"{setting['name']}_lr{lr}"


def write_config(setting: dict, lr: str, conf_dir: Path) -> Path:
    """The setting's YAML at rate ``lr``, written only when it changed (hdmole.sh's done marker reads it)."""
    base = yaml.safe_load(Path(setting["config"]).read_text(encoding="utf-8")) or {}
    conf = deep_merge(base, setting["set"])
    conf = deep_merge(conf, {"optim_conf": {"lr": float(lr)}})
    text = (f"# generated by local/tune_dev.py: {setting['config']} + {setting['set']} at lr {lr}\n"
            + yaml.safe_dump(conf, allow_unicode=True, sort_keys=False))
    out = conf_dir / f"finetune_{run_name(setting, lr)}.yaml"
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        conf_dir.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return out


def is_current(setting: dict, lr: str) -> bool:
    """Is the run of ``setting`` at ``lr`` the setting's YAML exactly as it is?"""
    base = yaml.safe_load(Path(setting["config"]).read_text(encoding="utf-8")) or {}
    return deep_merge(deep_merge(base, setting["set"]), {"optim_conf": {"lr": float(lr)}}) == base


def fmt_set(overrides: dict, prefix: str = "") -> str:
    parts = []
    for k, v in overrides.items():
        if isinstance(v, dict):
            parts.append(fmt_set(v, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}: {v}")
    return ", ".join(p for p in parts if p)


def dev_cer(run_dir: Path):
    """The run's dev CER in % (stage 6's scoring of its decoding of dev), or None."""
    path = run_dir / "decode_dev" / "score_cer" / "result.json"
    if not path.is_file():
        return None
    return 100.0 * float(json.loads(path.read_text(encoding="utf-8"))["cer"])


def run_result(run_dir: Path, criterion: str):
    """{"value": the run's figure in % by ``criterion``, "epoch": the epoch of its best valid
    accuracy, "fields": that epoch's valid fields}, or None while the figure is missing."""
    acc = best_valid(run_dir / "train.log")
    if acc is None:
        return None
    value = 100.0 * acc[0] if criterion == "acc" else dev_cer(run_dir)
    return None if value is None else {"value": value, "epoch": acc[1], "fields": acc[2]}


def merit(criterion: str, value: float) -> float:
    """A figure on a scale where higher is better: accuracy as it is, CER negated."""
    return value if criterion == "acc" else -value


def gain(criterion: str, a: float, b: float) -> float:
    """How much better figure a is than b, in points."""
    return merit(criterion, a) - merit(criterion, b)


def noise_margin(gaps: list) -> float:
    """Twice the root mean square of the noise pairs' gaps (0 when there is none)."""
    return 2.0 * (sum(g * g for g in gaps) / len(gaps)) ** 0.5 if gaps else 0.0


def report(out_dir: Path, settings: list, criterion: str = "cer") -> str:
    lrs = sorted({lr for s in settings for lr in s["lrs"]}, key=float)
    res = {(s["name"], lr): run_result(out_dir / run_name(s, lr), criterion) for s in settings for lr in s["lrs"]}
    fig = (lambda v: f"{v:.2f}%") if criterion == "acc" else (lambda v: f"CER {v:.2f}%")
    best = {}
    for s in settings:
        done = [(res[s["name"], lr], lr) for lr in s["lrs"] if res[s["name"], lr] is not None]
        best[s["name"]] = max(done, key=lambda d: merit(criterion, d[0]["value"])) if done else None
    ref = settings[0]["name"]
    what = ("Best valid token accuracy in % (its epoch) of each fine-tuning run on dev" if criterion == "acc" else
            "Dev CER in % of each fine-tuning run (dev decoded and scored as stage 6 decodes and scores the "
            "test sets; the checkpoint stage 6 decodes, chosen by valid token accuracy, whose best epoch is in "
            "brackets)")
    lines = ["# Settings chosen on dev", "",
             f"{what}; the best rate of each setting in bold; Δ = that best against `{ref}`'s best, in points"
             + ("" if criterion == "acc" else " (negative: a lower CER)")
             + "; active = mean active experts on dev at the best epoch (- for a plain LoRA). Same source model, "
             "data, epochs and selection rule for every run.", "",
             "| setting | what it is | " + " | ".join(f"lr {lr}" for lr in lrs) + " | Δ | active |",
             "|---|---|" + "---:|" * len(lrs) + "---:|---:|"]
    for s in settings:
        b = best[s["name"]]
        cells = []
        for lr in lrs:
            r = res.get((s["name"], lr))
            cell = "" if lr not in s["lrs"] else "-" if r is None else f"{r['value']:.2f} ({r['epoch']})"
            cells.append(f"**{cell}**" if b is not None and lr == b[1] and r is not None else cell)
        delta = "-" if b is None or best[ref] is None else f"{b[0]['value'] - best[ref][0]['value']:+.2f}"
        active = "-" if b is None or "hdmole_active" not in b[0]["fields"] else f"{b[0]['fields']['hdmole_active']:.2f}"
        seed = f", seed {s['seed']}" if s["seed"] else ""
        lines.append(f"| {s['name']}{seed} | {s['about']} | " + " | ".join(cells) + f" | {delta} | {active} |")
    lines += ["", "Each setting is its YAML plus these keys:", ""]
    lines += [f"- `{s['name']}`: `{s['config']}`" + (f" + {fmt_set(s['set'])}" if s["set"] else "") for s in settings]
    # a noise pair is compared at the rates both ran (a control often runs at one rate only)
    gaps = [abs(res[s["name"], lr]["value"] - res[s["noise_of"], lr]["value"]) for s in settings if s["noise_of"]
            for lr in s["lrs"] if res.get((s["noise_of"], lr)) and res[s["name"], lr]]
    margin = noise_margin(gaps)
    lines += ["", f"Noise margin: {margin:.2f} points, twice the root mean square of the gaps between a setting "
              f"and its noise control (`noise_of`) at the same rate ({len(gaps)} gap(s): "
              + ", ".join(f"{g:.2f}" for g in gaps) + ")" if gaps
              else "Noise margin: none measured (no `noise_of` pair has finished at a common rate)",
              "", "Chosen per fine-tuning YAML (over its settings and rates, controls and other seeds left out): "
              "its best on dev where that beats the YAML as it is by more than the noise margin, else the YAML "
              "as it is:", ""]
    for cfg in dict.fromkeys(s["config"] for s in settings):
        runs = [(res[s["name"], lr]["value"], lr, s) for s in settings for lr in s["lrs"]
                if s["config"] == cfg and s["seed"] == 0 and not s["control"] and res[s["name"], lr]]
        if not runs:
            continue
        val, lr, s = max(runs, key=lambda r: merit(criterion, r[0]))
        what = f"`{s['name']}` at lr {lr} ({fig(val)}: {fmt_set(dict(s['set'], optim_conf={'lr': float(lr)}))})"
        now = next((r for r in runs if is_current(r[2], r[1])), None)
        if now is None:
            lines.append(f"- `{cfg}`: {what}; the YAML as it is was not run")
        elif gain(criterion, val, now[0]) > margin:
            lines.append(f"- `{cfg}`: **change** to {what}: {gain(criterion, val, now[0]):+.2f} better than the YAML "
                         f"as it is (`{now[2]['name']}` at lr {now[1]}, {fig(now[0])})")
        elif (s["name"], lr) == (now[2]["name"], now[1]):
            lines.append(f"- `{cfg}`: **keep** the YAML as it is (`{now[2]['name']}` at lr {now[1]}, {fig(now[0])}): "
                         "the best on dev")
        else:
            lines.append(f"- `{cfg}`: **keep** the YAML as it is (`{now[2]['name']}` at lr {now[1]}, {fig(now[0])}); "
                         f"the best, {what}, is within the noise")
    runs = [out_dir / run_name(s, lr) for s in settings for lr in s["lrs"]]
    lines += [""] + code_record.markdown(code_record.collect([r for r in runs if r.is_dir()]), root=out_dir)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ladder", help="a YAML of settings (see above), e.g. conf/tune_dev.yaml")
    p.add_argument("--configs", nargs="+", help="fine-tuning YAMLs, each a setting without overrides")
    p.add_argument("--lrs", nargs="+", help="peak learning rates (with --configs; with --ladder: its default)")
    p.add_argument("--exp_dir", default="exp", help="the recipe's exp dir (source model, LLM, accent-ID head)")
    p.add_argument("--out_dir", default="exp/tune_dev")
    p.add_argument("--pretrained_model", default=None, help="source model (default: <exp_dir>/source/valid.acc.ave.pth)")
    p.add_argument("--llm_dir", default=None, help="the LLM (default: <exp_dir>/llm)")
    p.add_argument("--aid_model", default=None,
                   help="accent-ID head (default: <exp_dir>/accent_id/valid.acc_aid.ave.pth, if it exists)")
    p.add_argument("--ngram_lm", default=None,
                   help="the n-gram LM the dev decodings fuse, as stage 6 (default: <exp_dir>/ngram/lm.arpa, if it exists)")
    p.add_argument("--criterion", choices=CRITERIA, default="cer",
                   help="what a run is judged by on dev (see above): cer (decodes dev) or acc")
    p.add_argument("--recipe_args", default="", help="more run.sh / hdmole.sh options, e.g. \"--data_dir D --dump_dir U\"")
    p.add_argument("--report_only", action="store_true", help="only (re)write RESULTS.md")
    a = p.parse_args(argv)
    if bool(a.ladder) == bool(a.configs):
        p.error("give --ladder YAML or --configs (with --lrs), not both")
    try:
        if a.ladder:
            settings = load_ladder(Path(a.ladder))
            if a.lrs:
                for s in settings:
                    s["lrs"] = list(a.lrs)
        else:
            if not a.lrs:
                p.error("--configs needs --lrs")
            settings = [{"name": Path(c).stem.replace("finetune_", ""), "config": c, "about": "", "set": {},
                         "lrs": list(a.lrs), "seed": 0, "control": False, "noise_of": None} for c in a.configs]
        check_settings(settings)
    except (ValueError, yaml.YAMLError) as e:
        p.error(str(e))
    exp_dir, out_dir = Path(a.exp_dir), Path(a.out_dir)
    if not a.report_only:
        model = Path(a.pretrained_model or exp_dir / "source" / "valid.acc.ave.pth")
        llm = Path(a.llm_dir or exp_dir / "llm")
        aid = Path(a.aid_model or exp_dir / "accent_id" / "valid.acc_aid.ave.pth")
        ngram = Path(a.ngram_lm or exp_dir / "ngram" / "lm.arpa")
        if a.ngram_lm and not ngram.is_file():
            p.error(f"--ngram_lm {ngram} does not exist")
        for path, what in ((model, "source model (--pretrained_model)"), (llm, "LLM dir (--llm_dir)")):
            if not path.exists():
                p.error(f"the {what} {path} does not exist: run stages 1-4 first")
        for seed in sorted({s["seed"] for s in settings}):
            configs = [str(write_config(s, lr, out_dir / "conf")) for s in settings if s["seed"] == seed for lr in s["lrs"]]
            cmd = ["./run.sh", "--stage", "5", "--stop_stage", "5" if a.criterion == "acc" else "6",
                   "--pretrained_model", str(model), "--llm_dir", str(llm), "--exp_dir", str(out_dir),
                   "--seed", str(seed), "--train_configs", " ".join(configs)]
            if a.criterion == "cer":  # stage 6 on dev only: each run decoded and scored, no tables
                cmd += ["--test_sets", "dev", "--reports", "false"] + (["--ngram_lm", str(ngram)] if ngram.is_file() else [])
            if aid.is_file():
                cmd += ["--aid_model", str(aid)]
            cmd += shlex.split(a.recipe_args)
            print(f"[tune_dev] seed {seed}, {len(configs)} runs: {shlex.join(cmd)}", flush=True)
            rc = subprocess.call(cmd)
            if rc != 0:
                print(f"[tune_dev] the recipe failed (exit {rc}); see {out_dir}/<setting>_lr<rate>/train.log"
                      f" and {out_dir}/logs", file=sys.stderr)
                return rc
    out_dir.mkdir(parents=True, exist_ok=True)
    text = report(out_dir, settings, a.criterion)
    (out_dir / "RESULTS.md").write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
