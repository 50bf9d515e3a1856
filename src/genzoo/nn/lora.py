"""LoRA (Hu et al. 2021) through ``peft``: W x + (alpha / r) B A x with A (r x in), B (out x r), B = 0 at start.

Only the adapters train; every other weight is frozen. Checkpoints keep the base weight under
``<layer>.base_layer.weight``; :func:`base_key` maps such a key back to the plain layer's key, so a model trained
without LoRA initialises a LoRA model, and :func:`merged_weights` folds trained adapters into the base weights, so a
LoRA-tuned model initialises any model of the same shape (with or without new adapters).
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from genzoo.errors import GenzooError


def apply_lora(module: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str] | str) -> None:
    """Add rank-``rank`` adapters to the linear layers ``targets`` (names or "all-linear") and freeze the rest."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise GenzooError("LoRA needs peft (the 'llm' extra): pip install 'genzoo[llm]'") from None
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    with warnings.catch_warnings():  # GPT-2's Conv1D layers: peft picks the right weight layout and says so
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
        inject_adapter_in_model(config, module)
    for name, param in module.named_parameters():
        param.requires_grad = "lora_" in name


def base_key(key: str) -> str:
    """``blocks.0.qkv.base_layer.weight`` -> ``blocks.0.qkv.weight`` (identity for other keys)."""
    return key.replace(".base_layer.", ".")


def merged_weights(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s state dict with every adapter folded in (W + (alpha / r) B A), under the plain layers' keys.

    Merges in place: afterwards ``module`` computes the same function from its merged base weights alone.
    """
    state = module.state_dict()
    if any("lora_" in key for key in state):
        from peft.tuners.lora import LoraLayer

        for layer in module.modules():
            if isinstance(layer, LoraLayer):
                layer.merge()  # peft's scaling alpha / r and weight layout (GPT-2's Conv1D is transposed)
        state = module.state_dict()
    return {base_key(key): value for key, value in state.items() if "lora_" not in key}
