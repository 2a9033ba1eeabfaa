"""Choice of torch device and compute precision.

Kept apart from the engine because the rules are policy, not mechanics: which accelerator to
prefer, and which dtype each encoder family survives in.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "resolve_dtype"]

_DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")

# Encoder families whose activations overflow float16 (values past 65504 in the feed-forward
# blocks): they get bfloat16 on accelerators instead.
_FP16_UNSAFE_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5"})


def resolve_device(device: str) -> str:
    """Turn the user's ``device`` parameter into a concrete torch device string.

    ``"auto"`` prefers CUDA, then Apple's MPS, then the CPU. Explicit names (``"cpu"``,
    ``"cuda"``, ``"cuda:1"``, ``"mps"``) are checked against what this machine has, so that a
    request for a missing GPU fails here with a readable message instead of deep inside torch.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use 'auto', 'cpu', 'cuda', "
            f"'cuda:N' or 'mps'."
        ) from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available here.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA "
                f"device(s) exist."
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was requested but MPS is not available here.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: only cpu, cuda and mps devices are supported.")
    return str(parsed)


def resolve_dtype(dtype: str, device: str, model_type: str) -> torch.dtype:
    """Pick the compute dtype of the encoder.

    ``"auto"`` is float32 on the CPU (reduced precision is slower there and moves vectors),
    bfloat16 on accelerators for T5-family encoders (float16 overflows them), float16 on
    accelerators for everything else. Embeddings are always returned as float32 whatever this is.
    """
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {_DTYPE_NAMES}.")
    if dtype == "auto":
        if device.startswith("cpu"):
            return torch.float32
        if model_type in _FP16_UNSAFE_MODEL_TYPES:
            return torch.bfloat16
        return torch.float16
    return getattr(torch, dtype)
