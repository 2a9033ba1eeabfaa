"""The Dense stage (``2_Dense``): a linear projection with an activation.

instructor-large projects 1024 -> 768 with no bias and an Identity activation. The activation is
named in the config by a dotted torch class name; only a fixed list of torch activations is
accepted, so a config can never make us import an arbitrary object.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..._exceptions import CheckpointError
from ..checkpoint import read_json
from ..weights import find_weight_files, load_state_dict

if TYPE_CHECKING:
    from . import Features, LoadSettings

__all__ = ["Dense"]

_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": torch.nn.Identity,
    "torch.nn.modules.activation.Tanh": torch.nn.Tanh,
    "torch.nn.modules.activation.ReLU": torch.nn.ReLU,
    "torch.nn.modules.activation.GELU": torch.nn.GELU,
    "torch.nn.modules.activation.Sigmoid": torch.nn.Sigmoid,
    "torch.nn.modules.activation.SiLU": torch.nn.SiLU,
}


class Dense:
    """``activation(linear(x))`` in float32 on the model's device."""

    def __init__(self, linear: torch.nn.Linear, activation: torch.nn.Module) -> None:
        self.linear = linear
        self.activation = activation
        self.output_dim = linear.out_features

    @classmethod
    def load(cls, folder: Path, *, input_dim: int | None, settings: LoadSettings) -> Dense:
        """Build the Dense stage of ``folder`` from its config and weights."""
        path = folder / "config.json"
        config = read_json(path, what="Dense stage")
        if not isinstance(config, dict):
            raise CheckpointError(f"{path} must hold a JSON object.")
        try:
            n_in, n_out = int(config["in_features"]), int(config["out_features"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path} needs integer in_features and out_features.") from None
        if n_in != input_dim:
            raise CheckpointError(
                f"{path}: in_features {n_in} but the previous stage gives {input_dim}."
            )
        activation_name = config.get("activation_function", "torch.nn.modules.linear.Identity")
        if activation_name not in _ACTIVATIONS:
            raise CheckpointError(
                f"{path}: activation_function {activation_name!r} is not one of the supported "
                f"{sorted(_ACTIVATIONS)}."
            )
        has_bias = bool(config.get("bias", True))
        if (
            find_weight_files(folder, "model") is None
            and find_weight_files(folder, "pytorch_model") is None
        ):
            raise CheckpointError(f"no weights for the Dense stage in {folder}.")
        state = load_state_dict(folder)
        expected = {"linear.weight": (n_out, n_in)} | (
            {"linear.bias": (n_out,)} if has_bias else {}
        )
        missing = set(expected) - set(state)
        if missing:
            raise CheckpointError(f"Dense weights in {folder} lack {sorted(missing)}.")
        # Compared before the layer is built: a config claiming a billion features must not
        # allocate them.
        for name, shape in expected.items():
            if tuple(state[name].shape) != shape:
                raise CheckpointError(
                    f"Dense weights in {folder}: {name} has shape {tuple(state[name].shape)}, "
                    f"but {path} needs {shape}."
                )
        linear = torch.nn.Linear(n_in, n_out, bias=has_bias)
        with torch.no_grad():
            linear.weight.copy_(state["linear.weight"])
            if has_bias:
                linear.bias.copy_(state["linear.bias"])
        return cls(linear.to(settings.device).eval(), _ACTIVATIONS[activation_name]())

    def __call__(self, features: Features) -> Features:
        features["sentence_embedding"] = self.activation(
            self.linear(features["sentence_embedding"])
        )
        return features
