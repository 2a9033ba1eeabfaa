"""Choice of torch device, compute precision and encoder implementation.

Kept apart from the engine because the rules are policy, not mechanics: which accelerator to
prefer, which dtype each encoder family survives in, and where our own encoder forward replaces
transformers'.

Unlike the rest of the engine, this module does not import torch at its top: an estimator
asks for its device at fit, and when every vector it needs is in the cache (a warm start),
nothing else would need torch, whose import alone takes about a second. So torch is imported
here only when the answer needs it: a CPU-only build of torch says so in its ``version.py``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from .environment import positive_int_from_env

if TYPE_CHECKING:
    import torch

__all__ = [
    "BACKENDS",
    "DTYPE_NAMES",
    "IMPLEMENTATIONS",
    "NUM_THREADS_ENV",
    "OPENVINO_INSTALL_HINT",
    "apply_num_threads",
    "check_backend",
    "dtype_name",
    "num_threads_from_env",
    "resolve_device",
    "resolve_dtype",
    "resolve_implementation",
]

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
IMPLEMENTATIONS = ("auto", "fast", "transformers")

# The environment variable that sets torch's CPU threads (intra-op) when a model is asked for.
NUM_THREADS_ENV = "SK_INSTRUCTOR_NUM_THREADS"

# Encoder families whose activations overflow float16 (values past 65504 in the feed-forward
# blocks): they get bfloat16 on accelerators instead.
_FP16_UNSAFE_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5"})


BACKENDS = ("torch", "openvino")
OPENVINO_INSTALL_HINT = 'pip install "sk-instructor[openvino]"'
# The dtypes the OpenVINO backend computes in (its CPU precision hints f32 and bf16).
_OPENVINO_DTYPES = ("float32", "bfloat16")


def check_backend(backend: str, *, device: str, dtype: str, compile: bool) -> None:
    """Refuse a backend, or a combination with it, that cannot run, naming the parameter.

    Called before anything loads (and before the cache is asked), so that a request that
    could never be computed fails at once rather than after a warm start served it.

    Parameters
    ----------
    backend : str
        ``"torch"`` or ``"openvino"``.
    device : str
        The resolved device (``"cpu"``, ``"cuda:0"``...).
    dtype : str
        The requested dtype name (``"auto"``, ``"float32"``...).
    compile : bool
        The ``compile`` parameter.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; use one of {BACKENDS}.")
    if backend == "torch":
        return
    if not device.startswith("cpu"):
        raise _openvino_device_error(device)
    if dtype not in ("auto", *_OPENVINO_DTYPES):
        raise ValueError(
            f"backend='openvino' runs in float32 or bfloat16; dtype={dtype!r} cannot be used "
            f"with it (use dtype='auto', 'float32' or 'bfloat16')."
        )
    if compile:
        raise ValueError(
            "compile=True compiles torch's forward with torch.compile; with backend='openvino' "
            "OpenVINO compiles the model itself. Set compile=False."
        )
    if importlib.util.find_spec("openvino") is None:
        raise ImportError(f"backend='openvino' needs OpenVINO: {OPENVINO_INSTALL_HINT}")


def _openvino_device_error(device: str) -> ValueError:
    return ValueError(
        f"backend='openvino' runs on the CPU; device={device!r} cannot be used with it. "
        f"Set device='cpu' (or 'auto'), or backend='torch' for a GPU."
    )


def resolve_device(device: str, backend: str = "torch") -> str:
    """Turn the user's ``device`` parameter into a concrete torch device string.

    ``"auto"`` prefers CUDA, then Apple's MPS, then the CPU; with ``backend="openvino"``, which
    runs on the CPU only, it is the CPU. Explicit names (``"cpu"``, ``"cuda"``, ``"cuda:1"``,
    ``"mps"``) are checked against what this machine has, so that a request for a missing GPU
    fails here with a readable message instead of deep inside torch.
    """
    if backend == "openvino" and device != "auto" and not device.startswith("cpu"):
        raise _openvino_device_error(device)
    if device == "cpu" or (device == "auto" and (backend != "torch" or _torch_is_cpu_only())):
        return "cpu"
    import torch

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


def dtype_name(dtype: str, device: str, model_type: str) -> str:
    """The compute dtype of the encoder, by name (``"float32"``...).

    ``"auto"`` is float32 on the CPU (reduced precision is slower there and moves vectors),
    bfloat16 on accelerators for T5-family encoders (float16 overflows them), float16 on
    accelerators for everything else. Embeddings are always returned as float32 whatever this is.
    """
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {DTYPE_NAMES}.")
    if dtype != "auto":
        return dtype
    if device.startswith("cpu"):
        return "float32"
    return "bfloat16" if model_type in _FP16_UNSAFE_MODEL_TYPES else "float16"


def resolve_dtype(dtype: str, device: str, model_type: str) -> torch.dtype:
    """:func:`dtype_name` as a ``torch.dtype``."""
    import torch

    return getattr(torch, dtype_name(dtype, device, model_type))


@cache
def _torch_is_cpu_only() -> bool:
    """Whether the installed torch was built without CUDA or ROCm, read without importing it.

    Only a definite answer counts: where torch is imported already, or its build cannot be
    read, or the machine is a Mac (MPS needs no special build), this says False and torch
    decides.
    """
    if "torch" in sys.modules or sys.platform == "darwin":
        return False
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    try:
        build = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return False
    return all(
        re.search(rf"^{name}\s*(?::[^=\n]*)?=\s*None\s*$", build, re.M) for name in ("cuda", "hip")
    )


def resolve_implementation(
    requested: str,
    *,
    device: str,
    unsupported: str | None,
    compile: bool,
    dtype: torch.dtype | str | None = None,
) -> str:
    """Which encoder forward runs: ``"fast"`` (ours, ``t5_encoder.py``) or ``"transformers"``.

    ``"auto"`` takes the fast forward where it covers the checkpoint (``unsupported`` is
    ``None``) and either the device is a CUDA GPU, which it is built for (its speed there is
    measured by ``benchmarks/gpu_check.sh``), or ``compile`` was asked for (what is compiled is
    the fast forward), or the compute dtype is bfloat16 on the CPU: there it was measured
    faster than transformers' module in bfloat16 on a T5-base-shaped checkpoint
    (``benchmarks/cpu_runtimes.py``, README "Speed on a CPU"), at the same cosine to float32.
    In float32 on the CPU, transformers' module stays the default the CPU benchmarks measured.
    ``"fast"`` forces it (tests, benchmarks) and fails where it does not
    apply; ``"transformers"`` forces transformers' module.
    """
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={requested!r}: use one of {IMPLEMENTATIONS}.")
    if requested == "transformers":
        return requested
    if unsupported is not None:
        if requested == "fast":
            raise ValueError(f"the fast encoder does not cover this checkpoint: {unsupported}.")
        return "transformers"
    if requested == "fast" or compile or device.split(":")[0] == "cuda":
        return "fast"
    if device.startswith("cpu") and str(dtype).removeprefix("torch.") == "bfloat16":
        return "fast"
    return "transformers"


def num_threads_from_env() -> int | None:
    """``$SK_INSTRUCTOR_NUM_THREADS`` as a positive integer, or ``None`` when it is unset or empty.

    A ValueError naming the variable refuses anything else, before a model loads.
    """
    return positive_int_from_env(
        NUM_THREADS_ENV,
        meaning="torch's CPU threads for encoding",
        advice="unset it for torch's default (one per core)",
    )


def apply_num_threads(*, limit: int | None = None) -> int | None:
    """Set torch's CPU threads from ``$SK_INSTRUCTOR_NUM_THREADS``; returns the count set, or
    ``None`` when the variable is unset (torch's own setting, e.g. ``torch.set_num_threads``,
    is then left alone).

    ``limit`` caps the count (a process forked after loading a model stays on one thread:
    torch's thread pool does not survive fork). The setting is process-wide, as torch's is.
    """
    threads = num_threads_from_env()
    if threads is None:
        return None
    if limit is not None:
        threads = min(threads, limit)
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
