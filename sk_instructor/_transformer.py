"""The Transformer stage: tokenizer, encoder network and ``sentence_bert_config.json``.

Loads only what the checkpoint's own files describe, through transformers' classes for known
architectures: ``trust_remote_code`` is never enabled, so a checkpoint cannot bring code along.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checkpoint import read_json
from ._exceptions import CheckpointError
from ._weights import load_state_dict

if TYPE_CHECKING:
    import torch

__all__ = ["TransformerStage", "load_transformer"]

# For T5-family checkpoints only the encoder exists in the published weights (and is all an
# embedding needs), so the encoder-only classes are used instead of AutoModel's seq2seq model.
_ENCODER_ONLY_CLASSES = {
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
}


@dataclass
class TransformerStage:
    """The loaded first stage of a checkpoint."""

    model: Any  # a transformers PreTrainedModel in eval mode on its device
    tokenizer: Any  # a fast tokenizer, right padding
    max_seq_length: int
    do_lower_case: bool
    model_type: str
    hidden_size: int


def read_transformer_config(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (``config.json``, ``sentence_bert_config.json``) of the stage, validated."""
    config = read_json(folder / "config.json", what="Transformer stage")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CheckpointError(f"{folder / 'config.json'} has no 'model_type' string.")
    sbert_path = folder / "sentence_bert_config.json"
    sbert = read_json(sbert_path, what="Transformer stage") if sbert_path.exists() else {}
    if not isinstance(sbert, dict):
        raise CheckpointError(f"{sbert_path} must hold a JSON object.")
    max_len = sbert.get("max_seq_length")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 2):
        raise CheckpointError(f"{sbert_path}: max_seq_length must be an integer >= 2.")
    return config, sbert


def load_transformer(
    folder: Path, *, device: str, dtype_for: Any
) -> tuple[TransformerStage, torch.dtype]:
    """Load tokenizer and encoder from ``folder`` onto ``device``.

    ``dtype_for`` maps the model type (``"t5"``, ``"bert"``...) to the compute dtype, which is
    only known once ``config.json`` is read.
    """
    import transformers

    config_dict, sbert = read_transformer_config(folder)
    model_type = config_dict["model_type"]
    dtype = dtype_for(model_type)
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise CheckpointError(
            f"{folder / 'config.json'} is not a usable model config: {exc}"
        ) from None
    model_class = _model_class(model_type, config, folder)
    state_dict = load_state_dict(folder)
    with _quiet_transformers():
        try:
            # The weights were read safely above; transformers only maps them onto the network.
            model, info = model_class.from_pretrained(
                None, config=config, state_dict=state_dict, output_loading_info=True
            )
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot build the encoder from {folder}: {exc}") from None
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"weights in {folder} lack {len(missing)} tensor(s) the encoder needs, e.g. "
            f"{missing[:3]}: the checkpoint does not match its config.json."
        )
    model.to(device=device, dtype=dtype).eval()
    tokenizer = _load_tokenizer(folder)
    max_seq_length = sbert.get("max_seq_length") or _default_max_length(tokenizer, config)
    stage = TransformerStage(
        model=model,
        tokenizer=tokenizer,
        max_seq_length=int(max_seq_length),
        do_lower_case=bool(sbert.get("do_lower_case", False)),
        model_type=model_type,
        hidden_size=int(getattr(config, "d_model", None) or config.hidden_size),
    )
    return stage, dtype


def _model_class(model_type: str, config: Any, folder: Path) -> Any:
    """The transformers class for this architecture (never a class shipped with the files)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    class_name = _ENCODER_ONLY_CLASSES.get(model_type)
    if class_name:
        return getattr(transformers, class_name)
    try:
        return MODEL_MAPPING[type(config)]
    except KeyError:
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type {model_type!r} has no encoder class in "
            f"transformers {transformers.__version__}."
        ) from None


def _load_tokenizer(folder: Path) -> Any:
    import transformers

    try:
        with _quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(folder), use_fast=True, trust_remote_code=False
            )
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot load the tokenizer files in {folder}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(
            f"the tokenizer in {folder} has no fast (tokenizer.json / Rust) implementation."
        )
    if tokenizer.pad_token_id is None:
        raise CheckpointError(f"the tokenizer in {folder} defines no padding token.")
    # Encoders are padded on the right so that the instruction tokens always sit at positions
    # 0..n-1, where the pooling mask zeroes them.
    tokenizer.padding_side = "right"
    return tokenizer


def _default_max_length(tokenizer: Any, config: Any) -> int:
    limits = [
        value
        for value in (
            getattr(tokenizer, "model_max_length", None),
            getattr(config, "max_position_embeddings", None),
        )
        if isinstance(value, int) and 0 < value < 1_000_000
    ]
    return min(limits) if limits else 512


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' loading progress bars for the duration of a load."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
