"""espnet-hdmole: HDMoLE (a mixture of LoRA experts with hierarchical routing and dynamic
thresholds) for LLM-based ASR, as an ESPnet extension.

Importing this package registers the adapter ``hdmole`` in ESPnet's adapter table
(``espnet2.layers.create_adapter.create_adapter_fn_table``), so that a training YAML can say
``use_adapter: true``, ``adapter: hdmole``, ``adapter_conf: {...}``. It also limits ``hdmole``
and ESPnet's ``lora`` to the parts of the model named by its ``adapter_scope`` (the LLM-based ASR
model: the projector and the LLM, not the speech encoder; espnet_hdmole.layers.adapter_scope).
"""
from espnet_hdmole.layers.create_hdmole_adapter import (  # noqa: F401
    count_parameters,
    create_hdmole_adapter,
    hdmole_aux_loss,
    hdmole_layers,
    hdmole_state_dict,
    hdmole_statistics,
    load_hdmole_state_dict,
    mark_positions,
)
from espnet_hdmole.layers.hdmole_linear import HDMoLELinear  # noqa: F401
from espnet_hdmole.layers.routing import (  # noqa: F401
    PAD,
    SPEECH,
    TEXT,
    current_domain_posterior,
    domain_posterior,
    oracle_posterior,
    position_kinds,
)

__version__ = "0.1.0"


def register_espnet_adapter() -> None:
    """Add ``hdmole`` to ESPnet's adapter table and limit it and ``lora`` to a model's
    ``adapter_scope`` (idempotent)."""
    from espnet2.layers import create_adapter as _ca

    from espnet_hdmole.layers.adapter_scope import hdmole_matches, lora_matches, scoped

    table = _ca.create_adapter_fn_table
    table["hdmole"] = scoped(create_hdmole_adapter, hdmole_matches, "hdmole")
    if "lora" in table:
        table["lora"] = scoped(table["lora"], lora_matches, "lora")


register_espnet_adapter()
