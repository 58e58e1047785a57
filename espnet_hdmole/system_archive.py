"""A trained system in one shareable archive, and transcription from it without the recipe tree.

    python -m espnet_hdmole.bin.pack_system --exp_dir exp/hdmole --out hdmole.tar \\
        --ngram_lm exp/ngram/lm.arpa --ngram_weight 0.5 --results exp/RESULTS.md

    from espnet_hdmole.system_archive import load_system
    asr = load_system("hdmole.tar")
    asr.transcribe("utt.wav")          # -> the recognised text

The archive (a tar file) holds everything the model is built from, each file under a fixed name:

    manifest.json       format, system name, feature and decoding settings, where the base files
                        came from (paths at packing time) and the hash of the LLM directory, the
                        sha256 of every other file of the archive
    config.yaml         the system's training config, its paths pointing into the archive
    model.pth           the checkpoint (for an adapter system, the adapters and trainable parts)
    provenance.json     what it was trained on (espnet_hdmole.tasks.provenance): the hashes of
                        its base checkpoints, LLM, CMVN statistics and Whisper model
    base/<i>.pth        the --init_param checkpoints it was trained from (the source model, the
                        accent-ID head): the frozen base of an adapter checkpoint
    llm/                the LLM directory (weights, config, tokenizer)
    cmvn_stats.npz      global CMVN statistics (fbank features)
    whisper/            the Whisper model directory (a Whisper encoder)
    ngram.arpa          the n-gram LM fused into the search (optional)
    README.md           the system's row of the results table it was scored in (optional)

Loading checks every file against the manifest, then builds the model as decoding does
(``LLMASRTask.build_model_from_file``), whose provenance check refuses a base that is not the one
the checkpoint was trained on.
"""
import json
import os
import shlex
import shutil
import tarfile
import tempfile
import weakref
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
import yaml

from espnet_hdmole.errors import UserError
from espnet_hdmole.tasks.provenance import PATH_KEYS
from espnet_hdmole.utils.fingerprint import file_sha256, files_sha256

FORMAT = 1
FEATS_OF_INPUT_SIZE = {83: "fbank_pitch", 80: "fbank", 1: "raw"}
DECODE_DEFAULTS = {"beam_size": 4, "max_new_tokens": 128, "length_penalty": 1.0, "ngram_weight": 0.0}
# each path setting of a config (provenance.PATH_KEYS), under its name in the archive
IN_ARCHIVE = {("model_conf", "llm_dir"): "llm", ("normalize_conf", "stats_file"): "cmvn_stats.npz",
              ("encoder_conf", "whisper_dir"): "whisper"}
assert set(IN_ARCHIVE) == set(PATH_KEYS)


def _path_settings(conf: dict):
    """(section dict, key, value, name in the archive) of every path setting the config has."""
    for (section, key), name in IN_ARCHIVE.items():
        d = conf.get(section) or {}
        if d.get(key):
            yield d, key, d[key], name


def _resolved(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _copy_dir(src: Path, dst: Path) -> None:
    """A model directory without its hidden files (markers), as the provenance hash sees it."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n.startswith(".")])


def scored_settings(exp_dir: Path) -> dict:
    """The decoding settings the recipe's stage 6 scored the system with (the command line at the
    top of its decoding log), as far as they are there: beam_size, max_new_tokens, length_penalty,
    ngram_weight, and the n-gram LM (ngram_file)."""
    from espnet_hdmole.bin.llm_asr_inference import get_parser

    logs = [exp_dir / "decode_union" / "decode.log", exp_dir / "decode_union" / "split" / "decode.1.log"]
    for log in logs:
        if log.is_file():
            words = shlex.split(log.read_text(encoding="utf-8", errors="replace").splitlines()[0].lstrip("# "))
            if "espnet_hdmole.bin.llm_asr_inference" not in words:
                return {}
            args, _ = get_parser().parse_known_args(words[words.index("espnet_hdmole.bin.llm_asr_inference") + 1:])
            return {k: getattr(args, k) for k in ("beam_size", "max_new_tokens", "length_penalty", "ngram_weight",
                                                   "ngram_file")}
    return {}


def build_unpacked(directory: Path):
    """The model of an unpacked archive, built as decoding builds it (its paths pointed at the
    directory, in config.resolved.yaml): the provenance check of ``build_model_from_file`` refuses
    a base (init_param checkpoints, LLM) other than the one the checkpoint was trained on."""
    from espnet_hdmole.tasks.llm_asr import LLMASRTask

    conf = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8"))
    for section, key, value, _ in list(_path_settings(conf)):
        section[key] = str(directory / value)
    conf["init_param"] = [str(directory / s) for s in conf.get("init_param") or []]
    resolved = directory / "config.resolved.yaml"
    resolved.write_text(yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding="utf-8")
    model, _ = LLMASRTask.build_model_from_file(resolved, directory / "model.pth", "cpu")
    return model


def _results_row(results: Path, system: str) -> str:
    """The header and the row of ``system`` of the first table of a RESULTS.md that has one."""
    lines = results.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| [{system}]") or line.startswith(f"| {system} |"):
            top = i
            while top > 0 and lines[top - 1].startswith("|"):
                top -= 1
            return "\n".join(lines[top:top + 2] + [line]) + "\n"
    raise UserError(f"{results} has no row for the system '{system}'")


def _stage_base(conf: dict, root: Path, stage: Path) -> dict:
    """Copy what the model is built from into ``stage`` and point ``conf`` at the copies; returns
    where they came from."""
    sources = {"init_param": list(conf.get("init_param") or [])}
    for section, key, value, name in list(_path_settings(conf)):
        sources[key] = value
        src = _resolved(value, root)
        if src.is_dir():
            _copy_dir(src, stage / name)
        else:
            shutil.copy(src, stage / name)
        section[key] = name
    specs = []
    for i, spec in enumerate(conf.get("init_param") or []):
        path, *keys = str(spec).split(":")
        (stage / "base").mkdir(exist_ok=True)
        shutil.copy(_resolved(path, root), stage / "base" / f"{i}.pth")
        specs.append(":".join([f"base/{i}.pth"] + keys))
    conf["init_param"] = specs
    return sources


def pack(exp_dir: Union[str, Path], out: Union[str, Path], model_file: str = "valid.acc.ave.pth",
         root: Union[str, Path] = ".", feats_type: Optional[str] = None, decode: Optional[dict] = None,
         ngram_lm: Optional[str] = None, results: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write the system trained in ``exp_dir`` to the archive ``out``; relative paths of its config
    are read from ``root`` (the recipe directory it was trained in)."""
    exp_dir, out, root = Path(exp_dir), Path(out), Path(root)
    config_file, checkpoint = exp_dir / "config.yaml", exp_dir / model_file
    for f in (config_file, checkpoint):
        if not f.is_file():
            raise UserError(f"{f} does not exist: is {exp_dir} a trained system?")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists already: remove it, or pack with --overwrite true")
    conf = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    input_size = conf.get("input_size")
    feats_type = feats_type or FEATS_OF_INPUT_SIZE.get(input_size)
    if feats_type not in ("fbank_pitch", "fbank", "raw"):
        raise UserError(f"{config_file}: input_size {input_size!r} does not say which features the system reads; "
                        f"give --feats_type fbank_pitch, fbank or raw")
    scored = scored_settings(exp_dir)
    scored_lm = scored.pop("ngram_file", None)
    ngram_lm = ngram_lm or (str(_resolved(scored_lm, root)) if scored_lm else None)
    given = {k: v for k, v in (decode or {}).items() if v is not None}
    decode = {**DECODE_DEFAULTS, **{k: v for k, v in scored.items() if k in DECODE_DEFAULTS}, **given}
    if decode["ngram_weight"] and not ngram_lm:
        raise UserError(f"ngram_weight {decode['ngram_weight']} needs an n-gram LM (--ngram_lm)")
    if ngram_lm and not Path(ngram_lm).is_file():
        raise UserError(f"the n-gram LM {ngram_lm} does not exist")
    if not out.parent.is_dir():
        raise UserError(f"the directory of --out {out} does not exist")
    with tempfile.TemporaryDirectory(prefix="pack_", dir=out.parent) as tmp:
        stage = Path(tmp)
        try:
            sources = _stage_base(conf, root, stage)
        except FileNotFoundError as e:
            raise UserError(f"{config_file} names a file that does not exist: {e.filename} (relative paths are "
                            f"read from --root {root})") from e
        (stage / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding="utf-8")
        shutil.copy(checkpoint, stage / "model.pth")
        if (exp_dir / "provenance.json").is_file():
            shutil.copy(exp_dir / "provenance.json", stage / "provenance.json")
        if ngram_lm:
            shutil.copy(ngram_lm, stage / "ngram.arpa")
        if results:
            (stage / "README.md").write_text(
                f"# {exp_dir.name}\n\nIts row of {results}:\n\n{_results_row(Path(results), exp_dir.name)}", encoding="utf-8")
        build_unpacked(stage)  # it loads, on the base it was trained on, before anything is written
        (stage / "config.resolved.yaml").unlink()
        files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        manifest = {"format": FORMAT, "system": exp_dir.name, "feats_type": feats_type, "decode": decode,
                    "sources": sources, "llm_sha256": files_sha256(stage / "llm"),
                    "files": {f: file_sha256(stage / f) for f in files}}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        part = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        with tarfile.open(part, "w") as tar:
            for f in ["manifest.json"] + files:
                tar.add(stage / f, arcname=f)
        os.replace(part, out)
    return out


class PackedSystem:
    """A system loaded from its archive: ``transcribe(wav)``."""

    def __init__(self, directory: Path):
        self.directory = directory
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise UserError(f"{directory}: archive format {manifest.get('format')!r}, this version reads {FORMAT}")
        for name, digest in manifest["files"].items():
            if not (directory / name).is_file() or file_sha256(directory / name) != digest:
                raise UserError(f"the archive's {name} is missing or not the file it was packed with (sha256 differs)")
        self.name, self.feats_type = manifest["system"], manifest["feats_type"]
        self.decode = dict(manifest["decode"])
        self.model = build_unpacked(directory)
        self.model.eval()
        self.model.restore_dtypes()
        self.ngram = None
        if (directory / "ngram.arpa").is_file():
            from espnet_hdmole.lm.ngram_scorer import NgramScorer

            self.ngram = NgramScorer(str(directory / "ngram.arpa"), self.model.tokenizer)

    def features(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """The model's input for a mono waveform: fbank (+ pitch) features, or the samples at 16 kHz."""
        from espnet_hdmole.asr.speech_features import fbank_features, resample

        if self.feats_type == "raw":
            return resample(np.asarray(wav, dtype=np.float32), sr, 16000)
        return fbank_features(wav, sr, 16000, 80, pitch=self.feats_type == "fbank_pitch")

    def recognize(self, audio: Union[str, Path, np.ndarray], sr: Optional[int] = None,
                  accent: Optional[str] = None, **decode) -> Dict:
        """{'text', 'tokens', 'score', 'accent' (when the model predicts it)} for one utterance:
        a wav file, or samples with their rate ``sr``. ``accent``: the true accent, for a system
        that routes with it (global_router: oracle). ``decode`` overrides the packed settings
        (beam_size, max_new_tokens, length_penalty, ngram_weight)."""
        from espnet_hdmole.asr.llm_utils import one_line

        if isinstance(audio, (str, Path)):
            import soundfile

            samples, sr = soundfile.read(str(audio), dtype="float32", always_2d=True)
            audio = samples[:, 0] if samples.shape[1] == 1 else samples  # several channels: refused below
        elif sr is None:
            raise UserError("recognize: give the sampling rate (sr) of the samples")
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise UserError(f"recognize: a mono waveform is needed, got samples of shape {audio.shape}")
        if np.issubdtype(audio.dtype, np.integer):  # e.g. int16 PCM: to [-1, 1)
            audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
        if not np.isfinite(audio).all():
            raise UserError("recognize: the audio holds NaN or infinite samples")
        x = torch.from_numpy(self.features(audio, sr))[None]
        settings = {**self.decode, **decode}
        if settings["ngram_weight"] and self.ngram is None:
            raise UserError(f"ngram_weight {settings['ngram_weight']}: the archive holds no n-gram LM")
        accent_ids = None
        if accent is not None:
            if accent not in self.model.accent_list:
                raise UserError(f"accent {accent!r} is not one of the system's {self.model.accent_list}")
            accent_ids = torch.tensor([[self.model.accent_list.index(accent)]])
        with torch.no_grad():
            hyp = self.model.recognize(
                x, torch.tensor([x.shape[1]]), accent=accent_ids, beam_size=settings["beam_size"],
                max_new_tokens=settings["max_new_tokens"], length_penalty=settings["length_penalty"],
                ngram=self.ngram if settings["ngram_weight"] else None, ngram_weight=settings["ngram_weight"],
            )[0]
        return {**hyp, "text": one_line(hyp["text"])}

    def transcribe(self, audio: Union[str, Path, np.ndarray], sr: Optional[int] = None, **kwargs) -> str:
        """The recognised text of one utterance (see ``recognize``)."""
        return self.recognize(audio, sr, **kwargs)["text"]


def load_system(archive: Union[str, Path], directory: Optional[Union[str, Path]] = None) -> PackedSystem:
    """Unpack ``archive`` into ``directory`` (new or empty; default: a temporary directory, removed
    when the loaded system is) and load it."""
    archive = Path(archive)
    if not archive.is_file():
        raise UserError(f"the system archive {archive} does not exist")
    if directory is not None:
        target = Path(directory)
        if target.exists() and any(target.iterdir()):
            raise UserError(f"{target} is not empty: unpack a system archive into a new or empty directory")
        target.mkdir(parents=True, exist_ok=True)
    else:
        target = Path(tempfile.mkdtemp(prefix=f"{archive.stem}_"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")  # no absolute paths, links or '..' out of target
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{archive} is not a readable system archive: {e}") from e
    if not (target / "manifest.json").is_file():
        raise UserError(f"{archive} has no manifest.json: not a system archive of espnet_hdmole.bin.pack_system")
    system = PackedSystem(target)
    if directory is None:
        weakref.finalize(system, shutil.rmtree, target, True)
    return system
