"""The Transformer stage: tokenizer, encoder network and ``sentence_bert_config.json``.

Loads only what the checkpoint's own files describe, through transformers' classes for known
architectures: ``trust_remote_code`` is never enabled, so a checkpoint cannot bring code along.
Where our inference forward covers the architecture (T5 family, ``t5_encoder.py``) and the
policy selects it (``device.resolve_implementation``), it takes over the loaded weights and
transformers' module is let go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import transformers
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import logging as hf_logging

from ..._exceptions import CheckpointError
from ..._warnings import warn
from ..batching import align_lengths, bucket_lengths
from ..checkpoint import checkpoint_max_seq_length, transformer_configs
from ..device import dtype_name, resolve_dtype, resolve_implementation
from ..t5_encoder import FastT5Encoder, unsupported_reason
from ..tokenization import Tokenizer
from ..weights import load_state_dict

if TYPE_CHECKING:
    from . import Features, LoadSettings

__all__ = ["Transformer"]

# For T5-family checkpoints only the encoder exists in the published weights (and is all an
# embedding needs), so the encoder-only classes are used instead of AutoModel's seq2seq model.
_ENCODER_ONLY_CLASSES = {
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
}


class Transformer:
    """The first stage: token ids to one vector per token.

    Attributes
    ----------
    encoder : transformers.PreTrainedModel or FastT5Encoder
        The network, in eval mode on its device, in the compute dtype.
    implementation : {"transformers", "fast"}
        Which forward runs: transformers' module or ours (``t5_encoder.py``).
    tokenizer : Tokenizer
        The checkpoint's fast tokenizer with INSTRUCTOR's instruction rules.
    max_seq_length : int
        The checkpoint's token limit (``sentence_bert_config.json``, else the tokenizer's or
        the position table's).
    model_type : str
        ``config.json``'s ``model_type``, e.g. ``"t5"`` or ``"bert"``.
    dtype : torch.dtype
        The compute dtype the encoder runs in.
    output_dim : int
        The hidden width of the encoder.
    pad_to : callable or None
        The width a batch is padded to from its longest row: a multiple of 8 for the fast
        forward, one of a few bucketed widths when it is compiled (so that compiled code is
        reused); ``None``: the longest row's.
    """

    def __init__(
        self,
        encoder: Any,
        tokenizer: Tokenizer,
        *,
        max_seq_length: int,
        model_type: str,
        dtype: torch.dtype,
        output_dim: int,
        implementation: str = "transformers",
    ) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.model_type = model_type
        self.dtype = dtype
        self.output_dim = output_dim
        self.implementation = implementation
        self.pad_to: Callable[[np.ndarray], np.ndarray] | None = None
        if implementation == "fast":
            self.pad_to = bucket_lengths if encoder.compiled else align_lengths

    @property
    def max_positions(self) -> int | None:
        """The longest input the encoder's position table allows, when it has one."""
        limit = getattr(self.encoder.config, "max_position_embeddings", None)
        return limit if isinstance(limit, int) else None

    @classmethod
    def load(cls, folder: Path, *, input_dim: int | None, settings: LoadSettings) -> Transformer:
        """Load tokenizer and encoder from ``folder`` onto ``settings.device``.

        The compute dtype depends on the architecture (T5 overflows float16), so it is resolved
        here, once ``config.json`` is read.
        """
        config_dict, sbert = transformer_configs(folder)
        model_type = config_dict["model_type"]
        # The backend was checked (device, dtype, compile, installed) before anything loaded.
        openvino = settings.backend == "openvino"
        # With OpenVINO the torch module is only the source of the conversion, in float32;
        # OpenVINO computes in the precision asked for, and returns float32 hidden states.
        dtype = (
            torch.float32
            if openvino
            else resolve_dtype(settings.dtype, settings.device, model_type)
        )
        state_dict = load_state_dict(folder)
        # Checked before transformers builds anything: a config that asks for a million layers
        # would take minutes to build, and one with a billion-word vocabulary all the memory.
        _check_config_fits_weights(config_dict, state_dict, folder / "config.json")
        try:
            config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        except (ValueError, KeyError, OSError, TypeError) as exc:
            raise CheckpointError(
                f"{folder / 'config.json'} is not a usable model config: {exc}"
            ) from None
        model_class = _model_class(model_type, config, folder)
        with _quiet_transformers():
            try:
                # The weights were read safely above; transformers only maps them onto the network.
                encoder, info = model_class.from_pretrained(
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
        encoder.to(device=settings.device, dtype=dtype).eval()
        unsupported = unsupported_reason(config, dtype)
        if openvino:
            # What is converted is transformers' module: it goes through OpenVINO's converter
            # with dynamic shapes (our fast T5 forward caches its position bias per width).
            unsupported = "the openvino backend converts transformers' module"
        implementation = resolve_implementation(
            settings.implementation,
            device=settings.device,
            unsupported=unsupported,
            compile=settings.compile,
            dtype=dtype,
        )
        if settings.compile and implementation != "fast":
            warn(
                f"compile=True has no effect on this {model_type} encoder: only the T5-family "
                f"encoder forward is compiled "
                f"({unsupported or 'transformers implementation forced'}).",
                UserWarning,
                cause=("compile ignored", model_type, unsupported),
            )
        if implementation == "fast":
            # The fast forward takes over the weights; transformers' module is let go.
            encoder = FastT5Encoder.from_transformers(encoder, compile=settings.compile)
        elif openvino:
            from ..openvino_backend import OpenVINOEncoder

            with _quiet_transformers():
                encoder = OpenVINOEncoder(
                    encoder, dtype=dtype_name(settings.dtype, settings.device, model_type)
                )
        tokenizer = _load_tokenizer(folder)
        max_seq_length = checkpoint_max_seq_length(folder)
        stage = cls(
            encoder,
            Tokenizer(tokenizer, do_lower_case=bool(sbert.get("do_lower_case", False))),
            max_seq_length=int(max_seq_length),
            model_type=model_type,
            dtype=dtype,
            output_dim=int(getattr(config, "d_model", None) or config.hidden_size),
            implementation=implementation,
        )
        # The checkpoint's own limit is checked like a user's: past the position table, the
        # first long text would fail deep inside torch.
        if stage.max_positions is not None and stage.max_seq_length > stage.max_positions:
            raise CheckpointError(
                f"{folder / 'sentence_bert_config.json'}: max_seq_length "
                f"{stage.max_seq_length} exceeds the {stage.max_positions} positions of the "
                f"encoder in {folder / 'config.json'}."
            )
        return stage

    def __call__(self, features: Features) -> Features:
        """Add ``token_embeddings`` for ``input_ids``.

        ``attention_mask`` is ``None`` for a batch without padding: transformers then skips a
        device-to-host check of the mask (a synchronisation on accelerators) and attention
        takes its unmasked kernel.
        """
        mask = features["attention_mask"]
        if self.implementation == "fast":
            features["token_embeddings"] = self.encoder(features["input_ids"], mask)
            return features
        output = self.encoder(
            input_ids=features["input_ids"],
            attention_mask=None if mask is None else mask.long(),
        )
        features["token_embeddings"] = output.last_hidden_state
        return features


# config.json fields that size a network, by the names transformers' configs use for them.
_LAYERS = ("num_layers", "num_hidden_layers", "n_layer", "n_layers")
_WIDTH = ("d_model", "hidden_size", "n_embd", "dim")
_FEED_FORWARD = ("d_ff", "intermediate_size", "n_inner", "hidden_dim")
_OTHER_SIZES = ("vocab_size", "num_heads", "num_attention_heads", "d_kv", "max_position_embeddings")


def _check_config_fits_weights(config: dict[str, Any], state_dict: dict, path: Path) -> None:
    """Refuse a config whose sizes are not numbers, or describe a network far larger than the
    weights beside it: building it would take minutes or all the memory before failing."""
    sizes = {}
    for name in (*_LAYERS, *_WIDTH, *_FEED_FORWARD, *_OTHER_SIZES):
        value = config.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{path}: {name} must be a positive integer, got {value!r}.")
        sizes[name] = value

    def first(names: tuple[str, ...]) -> int:
        return next((sizes[name] for name in names if name in sizes), 0)

    width = first(_WIDTH)
    feed_forward = first(_FEED_FORWARD) or 4 * width
    # A transformer layer holds about 4 width^2 (attention) + 2 width x feed-forward weights,
    # and the embedding vocab x width: an estimate within a small factor of the real count.
    described = first(_LAYERS) * width * (4 * width + 2 * feed_forward)
    described += sizes.get("vocab_size", 0) * width
    held = sum(tensor.numel() for tensor in state_dict.values())
    if described > 4 * held + 10**6:
        raise CheckpointError(
            f"{path} describes about {described:,} weights, but the checkpoint's weight files "
            f"hold {held:,}: the config does not match its weights."
        )


def _model_class(model_type: str, config: Any, folder: Path) -> Any:
    """The transformers class for this architecture (never a class shipped with the files)."""
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


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' loading progress bars for the duration of a load."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
