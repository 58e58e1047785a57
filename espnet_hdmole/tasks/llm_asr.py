"""LLMASRTask: the ESPnet task of the LLM-based ASR model.

It uses ESPnet's AbsTask, Trainer, CommonCollateFn, checkpointing, --resume, n-best averaging,
--init_param, --freeze_param, --use_adapter/--adapter/--adapter_conf (``hdmole`` and ESPnet's
``lora``) and its distributed options as they are. On top it adds:
- ``check_inputs``: the data files, the LLM directory and the YAML keys are checked before
  training starts, with errors that name the file, line or key;
- a trainable-parameter report at start (share of full fine-tuning of the same parts);
- ``build_model_from_file`` that reloads adapter-only checkpoints exactly (base weights from
  the ``--init_param`` the model was trained from; no silent partial loads);
- ``--train_dtype bfloat16`` (espnet_hdmole.tasks.train_dtype), and after ESPnet's cast of the
  model to --train_dtype, the LLM in ``model_conf.llm_dtype`` and the HDMoLE adapters and the
  accent head in float32 (``build_optimizers``).
"""
import argparse
import inspect
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.asr.specaug.abs_specaug import AbsSpecAug
from espnet2.asr.specaug.specaug import SpecAug
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.layers.global_mvn import GlobalMVN
from espnet2.layers.utterance_mvn import UtteranceMVN
from espnet2.tasks.abs_task import AbsTask, optim_classes
from espnet2.torch_utils.initialize import initialize
from espnet2.train.class_choices import ClassChoices
from espnet2.train.collate_fn import CommonCollateFn
from espnet2.train.trainer import Trainer
from espnet2.utils.get_default_kwargs import get_default_kwargs
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import int_or_none, str_or_none

import espnet_hdmole  # noqa: F401  (registers the hdmole adapter)
from espnet_hdmole.asr.encoder_store import DATA_NAME as ENCODER_OUT
from espnet_hdmole.asr import routing_optim
from espnet_hdmole.asr.llm_asr_model import LLMASRModel
from espnet_hdmole.asr.narrow_conformer import ConformerEncoderNarrowSubsampling
from espnet_hdmole.asr.llm_utils import check_model_dir, load_tokenizer, unencodable_chars
from espnet_hdmole.asr.param_report import trainable_parameter_report
from espnet_hdmole.asr.preprocessor import LLMASRPreprocessor
from espnet_hdmole.errors import UserError, UserFileError
from espnet_hdmole.layers.cpu_dropout import use_cpu_dropout
from espnet_hdmole.tasks import provenance
from espnet_hdmole.tasks.train_dtype import TrainDtypeMixin
from espnet_hdmole.utils.kaldi_table import Table, read_table


def _whisper_encoder_class():
    try:
        from espnet_hdmole.asr.whisper_encoder import WhisperSpeechEncoder
    except ImportError:  # pragma: no cover
        return {}
    return {"whisper": WhisperSpeechEncoder}


frontend_choices = ClassChoices(
    name="frontend", classes=dict(default=DefaultFrontend), type_check=AbsFrontend, default=None, optional=True
)
specaug_choices = ClassChoices(
    name="specaug", classes=dict(specaug=SpecAug), type_check=AbsSpecAug, default=None, optional=True
)
normalize_choices = ClassChoices(
    "normalize", classes=dict(global_mvn=GlobalMVN, utterance_mvn=UtteranceMVN), type_check=AbsNormalize,
    default=None, optional=True,
)
encoder_choices = ClassChoices(
    "encoder",
    classes=dict(conformer=ConformerEncoder, conformer_narrow_subsampling=ConformerEncoderNarrowSubsampling,
                 transformer=TransformerEncoder, **_whisper_encoder_class()),
    type_check=AbsEncoder,
    default="conformer",
)


def _check_conf_keys(conf: dict, cls, key: str, skip: Tuple[str, ...] = ()) -> None:
    """Unknown keys of a *_conf dict for a class (its __init__) or a function are a UserError."""
    # a class whose __init__ passes **kwargs on to its base takes the base's keys too
    allowed = []
    for c in (cls.__mro__ if inspect.isclass(cls) else (cls,)):
        if inspect.isclass(c) and "__init__" not in vars(c):
            continue
        params = inspect.signature(c.__init__ if inspect.isclass(c) else c).parameters
        allowed += [k for k in params if k not in ("self", "model") + skip and k not in allowed
                    and params[k].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    else:
        return
    unknown = sorted(set(conf or {}) - set(allowed))
    if unknown:
        raise UserError(f"unknown key(s) {unknown} in {key} (for {cls.__name__}); expected some of {allowed}")


def _checked_model_conf(args: argparse.Namespace) -> dict:
    """model_conf with its keys checked and its LLM directory present."""
    mc = dict(args.model_conf or {})
    _check_conf_keys(mc, LLMASRModel, "model_conf", skip=("frontend", "specaug", "normalize", "encoder"))
    if not mc.get("llm_dir"):
        raise UserError("model_conf.llm_dir is required: a local directory with a transformers causal LM and its tokenizer")
    check_model_dir(mc["llm_dir"], "LLM (model_conf.llm_dir)")
    return mc


def _read_kaldi_file(path: str, what: str) -> Table:
    """A Kaldi-style data file, checked: it exists and has rows, its ids are unique and sorted."""
    if not Path(path).is_file():
        raise UserFileError(f"{what} file '{path}' does not exist")
    return read_table(path, what.strip("'"), allow_empty=True, sorted_ids=True, strip_bom=False,
                      require_rows=True, error=UserError)


def fused_on_cpu(optim: str, optim_conf: Optional[dict], params: List[torch.nn.Parameter]) -> dict:
    """``optim_conf`` with ``fused: true`` added for Adam and AdamW when every parameter is on the
    CPU and the config chooses no implementation (fused, foreach, differentiable): the same update
    in one kernel instead of several per tensor (~4x faster on the demo's encoder)."""
    conf = dict(optim_conf or {})
    if (optim in ("adam", "adamw") and not {"fused", "foreach", "differentiable"} & set(conf)
            and all(p.device.type == "cpu" for p in params)):
        conf["fused"] = True
    return conf


class LLMASRTask(TrainDtypeMixin, AbsTask):
    num_optimizers: int = 1
    class_choices_list = [frontend_choices, specaug_choices, normalize_choices, encoder_choices]
    trainer = Trainer

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser):
        group = parser.add_argument_group(description="Task related")
        group.add_argument("--init", type=str_or_none, default=None,
                           help="Initialisation of the non-LLM parts: chainer, xavier_uniform, ... (default: "
                                "PyTorch's); the LLM keeps the weights of model_conf.llm_dir")
        group.add_argument("--input_size", type=int_or_none, default=None,
                           help="Feature dimension when no frontend is used (precomputed features, e.g. 80 "
                                "for fbank; 1 for raw audio into the whisper encoder)")
        group.add_argument("--model_conf", action=NestedDictAction, default=get_default_kwargs(LLMASRModel),
                           help="LLMASRModel settings: llm_dir (required), accent_list, projector_conf, "
                                "prompt_prefix, prompt, aid_weight, use_accent_head, llm_dtype, frame_shift")
        group.add_argument("--routing_optim_conf", action=NestedDictAction, default={},
                           help="the routing parts (HDMoLE routers, thresholds, mix shares, the accent head): "
                                "lr_scale (their rate = the optimiser's x this, default 1.0), freeze_steps "
                                "(optimiser steps they stay frozen at the start, default 0); "
                                "espnet_hdmole/asr/routing_optim.py")
        group = parser.add_argument_group(description="Preprocess related")
        group.add_argument("--use_preprocessor", type=bool, default=True,
                           help="Tokenise transcripts with the LLM's tokenizer and map accent labels to indices")
        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    def get_parser(cls):
        parser = super().get_parser()
        # ESPnet lists the adapters of its own table as fixed choices; offer ours too
        from espnet2.layers.create_adapter import create_adapter_fn_table

        for action in parser._actions:
            if "--adapter" in action.option_strings:
                action.choices = sorted(create_adapter_fn_table)
                action.help = f"Adapter name, one of {sorted(create_adapter_fn_table)} (hdmole: this project's)"
        return parser

    @classmethod
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable:
        return CommonCollateFn(float_pad_value=0.0, int_pad_value=-1, not_sequence=["accent"])

    @classmethod
    def build_preprocess_fn(cls, args: argparse.Namespace, train: bool):
        if not args.use_preprocessor:
            return None
        mc = args.model_conf
        units = mc.get("ctc_units", "llm")
        pinyin_ctc = mc.get("ctc_weight", 0.0) > 0 and units in ("pinyin", "pinyin_tone")
        return LLMASRPreprocessor(
            train=train, llm_dir=mc["llm_dir"], accent_list=mc.get("accent_list"), pinyin_ctc=pinyin_ctc,
            pinyin_tones=units == "pinyin_tone",
        )

    @classmethod
    def required_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return ("speech", "text") if not inference else ("speech",)

    @classmethod
    def optional_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return ("accent", ENCODER_OUT)

    @classmethod
    def build_model(cls, args: argparse.Namespace) -> LLMASRModel:
        mc = _checked_model_conf(args)

        if args.frontend is not None:
            fcls = frontend_choices.get_class(args.frontend)
            _check_conf_keys(args.frontend_conf, fcls, "frontend_conf")
            frontend = fcls(**args.frontend_conf)
            input_size = frontend.output_size()
        else:
            if args.input_size is None:
                raise UserError("--input_size is required when no frontend is used (e.g. 80 for fbank features)")
            frontend, input_size = None, args.input_size
        specaug = None
        if args.specaug is not None:
            scls = specaug_choices.get_class(args.specaug)
            _check_conf_keys(args.specaug_conf, scls, "specaug_conf")
            specaug = scls(**args.specaug_conf)
        normalize = None
        if args.normalize is not None:
            ncls = normalize_choices.get_class(args.normalize)
            _check_conf_keys(args.normalize_conf, ncls, "normalize_conf")
            normalize = ncls(**args.normalize_conf)
        ecls = encoder_choices.get_class(args.encoder)
        _check_conf_keys(args.encoder_conf, ecls, "encoder_conf", skip=("input_size",))
        encoder = ecls(input_size=input_size, **args.encoder_conf)

        mc["feature_size"] = input_size
        model = LLMASRModel(frontend=frontend, specaug=specaug, normalize=normalize, encoder=encoder, **mc)
        use_cpu_dropout(model)  # the same dropout, with a cheaper mask on the CPU
        if args.init is not None:
            for part in (model.encoder, model.projector, model.accent_head):
                if part is not None and any(p.requires_grad for p in part.parameters()):
                    initialize(part, args.init)
        return model

    @classmethod
    def build_optimizers(cls, args: argparse.Namespace, model: torch.nn.Module) -> List[torch.optim.Optimizer]:
        # called right after ESPnet has cast the model to --train_dtype, frozen --freeze_param and
        # created the adapter: the last moment to set dtypes before the optimiser holds the parameters
        model.restore_dtypes()
        rep = trainable_parameter_report(model)
        logging.info(rep["text"])
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UserError("no trainable parameters: check --freeze_param and the adapter settings")
        args.optim_conf = fused_on_cpu(args.optim, args.optim_conf, params)
        conf = routing_optim.check_routing_optim_conf(getattr(args, "routing_optim_conf", None))
        if conf == routing_optim.DEFAULTS:
            return super().build_optimizers(args, model)
        if args.sharded_ddp or args.exclude_weight_decay:
            raise UserError("routing_optim_conf cannot be combined with sharded_ddp or exclude_weight_decay")
        optim_class = optim_classes.get(args.optim)
        if optim_class is None:
            raise UserError(f"optim must be one of {list(optim_classes)}, not {args.optim!r}")
        lr = (args.optim_conf or {}).get("lr", inspect.signature(optim_class).parameters["lr"].default)
        groups = routing_optim.parameter_groups(model, lr, conf)
        optim = optim_class(groups, **args.optim_conf)
        names = [n for n, _ in routing_optim.routing_parameters(model)]
        logging.info(f"routing parts ({len(names)} tensors) at lr x {conf['lr_scale']}, frozen for "
                     f"{conf['freeze_steps']} steps")
        if conf["freeze_steps"] > 0:
            optim._router_freeze = routing_optim.RouterFreeze(optim, conf["freeze_steps"])
        return [optim]

    # ------------------------------------------------------------------ input checks
    @classmethod
    def check_inputs(cls, args: argparse.Namespace) -> None:
        """Check everything a user produced before any training starts."""
        mc = _checked_model_conf(args)
        if getattr(args, "use_adapter", False):
            from espnet2.layers.create_adapter import create_adapter_fn_table

            if args.adapter != "hdmole":  # ESPnet's own adapters take their settings as arguments
                _check_conf_keys(args.adapter_conf, create_adapter_fn_table[args.adapter], "adapter_conf")
                rank = (args.adapter_conf or {}).get("rank", 1)
                if not isinstance(rank, int) or rank < 1:
                    raise UserError(f"adapter_conf.rank must be an integer >= 1, got {rank!r}")
            if (args.adapter == "hdmole" and args.ngpu > 1 and not args.multiprocessing_distributed
                    and int(os.environ.get("WORLD_SIZE", "1")) <= 1):  # (ESPnet's trainer would use DataParallel)
                raise UserError(
                    f"--ngpu {args.ngpu} without --multiprocessing_distributed true runs torch.nn.DataParallel, whose "
                    "replicas the HDMoLE layers cannot run: add --multiprocessing_distributed true (one process "
                    "per GPU; the recipe passes it with --ngpu > 1)")
            if args.adapter == "hdmole" and args.save_strategy == "adapter_only":
                raise UserError(
                    "save_strategy: adapter_only is ESPnet's path for lora/houlsby only; for adapter: hdmole "
                    "use save_strategy: required_grad_only (adapter weights and the other trainable parameters)"
                )
        tok = load_tokenizer(mc["llm_dir"])
        accents = list(mc.get("accent_list") or [])
        for opt in ("train_data_path_and_name_and_type", "valid_data_path_and_name_and_type"):
            entries = getattr(args, opt, None) or []
            ids_of: Dict[str, Tuple[str, List[str]]] = {}
            for path, name, typ in entries:
                if name == "text":
                    rows = _read_kaldi_file(path, "transcript")
                    for uid, text in rows.items():
                        if not text:
                            raise UserError(f"{rows.where(uid)}: utterance '{uid}' has an empty transcript")
                    bad = unencodable_chars(tok, "".join(sorted({c for t in rows.values() for c in t})))
                    if bad:
                        uid = next(u for u, t in rows.items() if any(c in bad for c in t))
                        raise UserError(
                            f"{path}: the tokenizer of {mc['llm_dir']} cannot encode {bad!r} "
                            f"(first in utterance '{uid}')"
                        )
                elif name == "accent":
                    rows = _read_kaldi_file(path, "accent label")
                    if not accents:
                        raise UserError(f"{path} gives accent labels but model_conf.accent_list is empty")
                    for uid, lab in rows.items():
                        if lab not in accents:
                            raise UserError(
                                f"{rows.where(uid)}: utterance '{uid}' has accent label '{lab}', not one of "
                                f"model_conf.accent_list {accents}"
                            )
                elif typ in ("sound", "kaldi_ark", "npy", "text", "text_int"):
                    rows = _read_kaldi_file(path, f"'{name}'")
                else:
                    continue
                ids_of[path] = (name, list(rows))
            files = list(ids_of.items())
            for path, (name, ids) in files[1:]:
                p0, (n0, ids0) = files[0]
                if ids != ids0:
                    only_a = sorted(set(ids0) - set(ids))[:3]
                    only_b = sorted(set(ids) - set(ids0))[:3]
                    raise UserError(
                        f"utterance ids of {path} ('{name}') and {p0} ('{n0}') disagree: e.g. only in the "
                        f"first: {only_b}, only in the second: {only_a}"
                    )

    @classmethod
    def main(cls, args: Optional[argparse.Namespace] = None, cmd=None):
        if args is None:
            args = cls.get_parser().parse_args(cmd)
        if not args.print_config and not getattr(args, "collect_stats", False):
            cls.check_inputs(args)
            if args.output_dir:
                provenance.write(args, args.output_dir)
        return super().main(args=args)

    # ------------------------------------------------------------------ reloading
    @classmethod
    def build_model_from_file(
        cls,
        config_file: Union[Path, str, None] = None,
        model_file: Union[Path, str, None] = None,
        device: str = "cpu",
    ):
        """Build the model from its config.yaml and load a checkpoint, exactly.

        The checkpoint's provenance (provenance.json beside it) must match the config and the
        base files it names (see espnet_hdmole.tasks.provenance); otherwise a UserError.

        A checkpoint saved with save_strategy ``required_grad_only`` (adapter-only) lacks the
        frozen base weights: they are loaded first from the ``--init_param`` files of the
        config, and the checkpoint on top. The LLM's own weights may also come from its llm_dir
        (the model is built with them); any other key (adapter weights inside the LLM included)
        that neither the checkpoint nor an --init_param file provides is an error.
        """
        model, args = super().build_model_from_file(config_file, None, device)
        if model_file is None:
            return model, args
        state = torch.load(model_file, map_location=device, weights_only=False)
        own = model.state_dict()
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise UserError(f"{model_file} has keys that the model of {config_file} does not: {unexpected[:10]}")
        absent = set(own) - set(state)
        from_llm_dir = absent & model.llm_dir_keys  # the LLM's own weights, loaded from llm_dir
        missing = absent - from_llm_dir  # adapters inside the LLM included: llm_dir lacks them
        provenance.check(config_file, model_file, args, uses_base=bool(absent and args.init_param),
                         uses_llm_dir=bool(from_llm_dir))
        if set(own) - set(state):
            from espnet2.torch_utils.load_pretrained_model import load_pretrained_model

            for spec in args.init_param or []:
                load_pretrained_model(spec, model, ignore_init_mismatch=False, map_location=device)
                missing -= provenance.init_param_keys(spec)
            if missing:
                raise UserError(
                    f"{model_file} is a partial checkpoint and {sorted(missing)[:10]} are given neither by it "
                    f"nor by --init_param {args.init_param}"
                )
            # LoRA base weights were just loaded unmerged: let loralib merge them again on eval
            for m in model.modules():
                if hasattr(m, "merged") and hasattr(m, "lora_A"):
                    m.merged = False
        model.load_state_dict(state, strict=False)
        return model, args
