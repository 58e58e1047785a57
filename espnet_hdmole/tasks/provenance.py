"""Provenance of a trained model: what it was built from, recorded beside its checkpoints and
checked whenever a checkpoint is loaded.

Adapter checkpoints (``save_strategy: required_grad_only`` or ``adapter_only``) hold the adapter
only; the frozen base comes back from the ``--init_param`` files and ``model_conf.llm_dir`` named
in the config. A retrained base, or a config of another system, would otherwise load silently.
So training writes ``provenance.json`` into its output directory:

    {"format": 1,
     "model": {the settings that define the model: encoder*, frontend*, normalize*, input_size,
               model_conf (less llm_dir), use_adapter, adapter, adapter_conf},
     "files": {"model_conf.llm_dir": sha256 of the LLM's files,
               "normalize_conf.stats_file": sha256, "encoder_conf.whisper_dir": sha256 of its files
               (a Whisper encoder), "init_param": [{"spec": ..., "sha256": ...}]}}

and :func:`check` (called by ``LLMASRTask.build_model_from_file``) refuses a config whose model
settings differ, or a base (init_param checkpoint, LLM directory) whose content changed, with an
error that names the config, the checkpoint and the base file.
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch

from espnet_hdmole.errors import UserError
from espnet_hdmole.utils.fingerprint import file_sha256, files_sha256

NAME = "provenance.json"
FORMAT = 1
MODEL_KEYS = ("frontend", "frontend_conf", "normalize", "normalize_conf", "input_size", "encoder", "encoder_conf",
              "model_conf", "use_adapter", "adapter", "adapter_conf")
# settings that are paths: their content is compared (by hash), not their spelling
PATH_KEYS = (("model_conf", "llm_dir"), ("normalize_conf", "stats_file"), ("encoder_conf", "whisper_dir"))


def _get(conf, key: str):
    return conf.get(key) if isinstance(conf, dict) else getattr(conf, key, None)


def model_settings(conf) -> dict:
    """The settings that define the model (a config dict or argparse Namespace), paths left out."""
    out = _without_paths({key: _get(conf, key) for key in MODEL_KEYS})
    if not out.get("use_adapter"):
        out["adapter"] = out["adapter_conf"] = None
    return json.loads(json.dumps(out, sort_keys=True, default=str))  # plain JSON types


def _without_paths(settings: dict) -> dict:
    """Model settings less the path settings (also for a record that names one that is compared by
    hash only now, e.g. encoder_conf.whisper_dir)."""
    return {k: ({x: y for x, y in v.items() if (k, x) not in PATH_KEYS} if isinstance(v, dict) else v)
            for k, v in settings.items()}


def _init_paths(conf) -> List[str]:
    return [str(spec).split(":")[0] for spec in (_get(conf, "init_param") or [])]


def base_files(conf) -> Dict[str, object]:
    """Hashes of the files the model is built on: the LLM, CMVN statistics, a Whisper model,
    init_param checkpoints."""
    out: Dict[str, object] = {}
    for key, sub in PATH_KEYS:
        path = (_get(conf, key) or {}).get(sub)
        if path and Path(path).is_dir():
            out[f"{key}.{sub}"] = files_sha256(path)
        elif path and Path(path).is_file():
            out[f"{key}.{sub}"] = file_sha256(path)
    out["init_param"] = [
        {"spec": str(spec), "sha256": file_sha256(p) if Path(p).is_file() else None}
        for spec, p in zip(_get(conf, "init_param") or [], _init_paths(conf))
    ]
    return out


def record(conf) -> dict:
    return {"format": FORMAT, "model": model_settings(conf), "files": base_files(conf)}


def _flat(d, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def setting_differences(recorded: dict, current: dict) -> List[str]:
    a, b = _flat(recorded), _flat(current)
    return [f"{k}: {b.get(k)!r} here, {a.get(k)!r} when trained" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def write(conf, output_dir) -> dict:
    """Record the provenance of a training run in ``output_dir`` (before it starts).

    An unfinished or finished run of other inputs in the same directory is refused: resuming or
    overwriting it would mix two models.
    """
    out = Path(output_dir)
    rec = record(conf)
    old = read(out / NAME)
    has_run = any(out.glob("*.pth"))
    # a file key the old record lacks (recorded by a newer version only) is not a difference
    files_differ = old is not None and any(old["files"][k] != rec["files"].get(k) for k in old["files"])
    if old is not None and has_run and (_without_paths(old["model"]) != rec["model"] or files_differ):
        why = setting_differences(_without_paths(old["model"]), rec["model"]) + [
            f"{k} changed" for k in sorted(set(old["files"]) | set(rec["files"]))
            if old["files"].get(k) != rec["files"].get(k)
        ]
        raise UserError(
            f"{out} holds a run trained from other inputs ({'; '.join(why[:4])}; see {out / NAME}): "
            f"remove it or choose another --output_dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / NAME)
    return rec


def read(path: Path) -> Optional[dict]:
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == FORMAT else None


def check(config_file, model_file, conf, uses_base: bool, uses_llm_dir: bool) -> None:
    """Refuse to load ``model_file`` with ``config_file`` (parsed: ``conf``) when they do not belong
    together or when the base it needs has changed since it was trained.

    uses_base: the checkpoint is partial, so the init_param files supply the frozen base.
    uses_llm_dir: the checkpoint lacks the LLM's weights, so model_conf.llm_dir supplies them.
    """
    prov_path = Path(model_file).parent / NAME
    rec = read(prov_path)
    if rec is None:
        if uses_base:
            raise UserError(
                f"{model_file} holds an adapter only and has no {NAME} beside it (trained by an older "
                f"version, or copied without its side files): its base cannot be verified; retrain it"
            )
        return
    diffs = setting_differences(_without_paths(rec["model"]), model_settings(conf))
    if diffs:
        raise UserError(
            f"{config_file} does not describe the model in {model_file} ({prov_path} records the settings it "
            f"was trained with): {'; '.join(diffs[:4])}{' ...' if len(diffs) > 4 else ''}"
        )
    if not (uses_base or uses_llm_dir):
        return  # a full checkpoint: its base files are not read, so not hashed either
    now = base_files(conf)
    if uses_llm_dir and rec["files"].get("model_conf.llm_dir") != now.get("model_conf.llm_dir"):
        raise UserError(
            f"the LLM directory {(_get(conf, 'model_conf') or {}).get('llm_dir')} (model_conf.llm_dir of {config_file}) is not the one {model_file} was trained on "
            f"(its files changed since; see {prov_path}): retrain the model on it, or restore the old LLM"
        )
    if uses_base:
        then = rec["files"].get("init_param", [])
        for i, item in enumerate(now["init_param"]):
            old = then[i]["sha256"] if i < len(then) else None
            if item["sha256"] != old:
                path = item["spec"].split(":")[0]
                state = "does not exist" if item["sha256"] is None else "has changed"
                raise UserError(
                    f"the base checkpoint {path} (--init_param of {config_file}) {state} since {model_file} was "
                    f"trained on it (sha256 {str(old)[:12]} then, {str(item['sha256'])[:12]} now; {prov_path}): "
                    f"retrain {Path(model_file).parent} on the new base, or restore the old one"
                )
        if len(then) != len(now["init_param"]):
            raise UserError(f"{config_file} names {len(now['init_param'])} --init_param files, {prov_path} "
                            f"records {len(then)}: the config does not belong to {model_file}")


def init_param_keys(spec: str) -> set:
    """The model's parameter names that an ``--init_param`` spec ``path[:src_key[:dst_key[:excludes]]]``
    gives, read as ESPnet's ``load_pretrained_model`` reads it: the keys of the checkpoint at path
    (of its "module" entry where it has one) that start with none of the comma-separated excluded
    prefixes, then those under src_key with it taken off, then dst_key put in front."""
    path, *keys = spec.split(":")
    src_key = keys[0] if len(keys) > 0 and keys[0] else None
    dst_key = keys[1] if len(keys) > 1 and keys[1] else None
    excluded = tuple(keys[2].split(",")) if len(keys) > 2 else ()  # (an empty field excludes every key, as there)
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "module" in state:  # (a wrapped state dict)
        state = state["module"]
    out = set()
    for k in state:
        if excluded and k.startswith(excluded):  # (dropped before src_key is applied)
            continue
        if src_key is not None:
            if not k.startswith(src_key + "."):
                continue
            k = k[len(src_key) + 1:]
        out.add(f"{dst_key}.{k}" if dst_key else k)
    return out
