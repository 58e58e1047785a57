"""``--train_dtype bfloat16`` for an ESPnet task (a mixin of the task class, before AbsTask).

ESPnet's ``--train_dtype`` offers float16, float32 and float64; the mixin adds bfloat16. ESPnet
then casts the whole model (AbsTask.main_worker: ``model.to(dtype=...)``, before the adapter is
created and the optimiser built); the task's ``build_optimizers`` puts the parts that stay in
float32 back (``LLMASRModel.restore_dtypes``). The data loaders read float32 whatever the
dtype, since numpy, which ESPnet's datasets cast with, has no bfloat16; the model casts its
inputs to its encoder's dtype.
"""
import argparse
import copy

BFLOAT16 = "bfloat16"


def data_dtype(dtype):
    """The dtype the data loaders read for a model of ``dtype``: float32 for bfloat16, else itself."""
    return "float32" if str(dtype).removeprefix("torch.") == BFLOAT16 else dtype


class TrainDtypeMixin:
    @classmethod
    def get_parser(cls) -> argparse.ArgumentParser:
        parser = super().get_parser()
        for action in parser._actions:  # argparse keeps no public handle on an option's choices
            if action.dest == "train_dtype" and action.choices is not None and BFLOAT16 not in action.choices:
                action.choices = list(action.choices) + [BFLOAT16]
                action.help = (action.help or "") + " bfloat16: the model in bfloat16 but the HDMoLE adapters " \
                    "and the accent head in float32, and model_conf.llm_dtype, when set, for the LLM."
        return parser

    @classmethod
    def build_iter_factory(cls, args: argparse.Namespace, *rest, **kwargs):
        if data_dtype(args.train_dtype) != args.train_dtype:
            args = copy.copy(args)
            args.train_dtype = data_dtype(args.train_dtype)
        return super().build_iter_factory(args, *rest, **kwargs)

    @classmethod
    def build_streaming_iterator(cls, *args, **kwargs):
        if "dtype" in kwargs:
            kwargs["dtype"] = data_dtype(kwargs["dtype"])
        return super().build_streaming_iterator(*args, **kwargs)
