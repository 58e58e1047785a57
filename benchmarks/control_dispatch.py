"""Per-layer switching of the bench's controls (routing_free_control.py, native_group_control.py).

A control replaces, for the HDMoLE layers it marks, what espnet_hdmole.layers.shared_input calls:
the autograd node ``GroupMixture`` (training) and, where it has one, ``mixture_forward`` (no
autograd: validation, decoding). ``switch(layers, GroupMixture=..., mixture_forward=...)`` records
the replacements on each layer and installs, once per process, one dispatcher per name in
shared_input; a group then runs what its first layer records, and a layer without a record runs
the real node. Controls switched on different models of one process thus never chain onto each
other, whatever order they are installed in.
"""
from typing import Callable, Optional, Sequence

from espnet_hdmole.layers import shared_input

ATTR = "_bench_control"  # a plain attribute of the layer: {name in shared_input: replacement}
REAL = {"GroupMixture": shared_input.GroupMixture, "mixture_forward": shared_input.mixture_forward}


class _GroupMixtureDispatch:
    """Stands for ``GroupMixture`` in shared_input."""

    @staticmethod
    def apply(layers, *args):
        return layers[0].__dict__.get(ATTR, REAL).get("GroupMixture", REAL["GroupMixture"]).apply(layers, *args)


def _mixture_forward_dispatch(layers, *args, **kwargs):
    return layers[0].__dict__.get(ATTR, REAL).get("mixture_forward", REAL["mixture_forward"])(layers, *args, **kwargs)


def switch(layers: Sequence, GroupMixture, mixture_forward: Optional[Callable] = None) -> int:
    """Make ``layers`` run the given node (and no-autograd forward, else the real one). Returns
    how many layers were switched."""
    if shared_input.GroupMixture is not _GroupMixtureDispatch:
        if shared_input.GroupMixture is not REAL["GroupMixture"] or shared_input.mixture_forward is not REAL["mixture_forward"]:
            raise RuntimeError("control_dispatch: shared_input's GroupMixture or mixture_forward was replaced by "
                               "something else; the bench's controls cannot tell what to fall back to")
        shared_input.GroupMixture, shared_input.mixture_forward = _GroupMixtureDispatch, _mixture_forward_dispatch
    record = {"GroupMixture": GroupMixture}
    if mixture_forward is not None:
        record["mixture_forward"] = mixture_forward
    for m in layers:
        m.__dict__[ATTR] = record  # (a plain attribute: no Module.__setattr__)
    return len(layers)

