"""Modules of espnet_hdmole loaded on their own, without the package.

Importing ``espnet_hdmole`` loads ESPnet and torch (~8 s), too slow for the recipe's data scripts
and per-output checks. A module that imports only the standard library (e.g. ``utils.kaldi_table``,
``utils.code_version``, ``errors``) can instead be loaded from its file; each is loaded once per
process, so its classes (e.g. an exception type) are the same wherever it is used.
"""
import importlib.util
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[4] / "espnet_hdmole"


def package_module(name: str):
    """The module ``espnet_hdmole.<name>`` (e.g. "utils.kaldi_table"), loaded from its file."""
    key = f"_hdmole_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, PACKAGE / Path(*name.split(".")).with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module
