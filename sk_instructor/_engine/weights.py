"""Reading weight files without ever running code stored in them.

The published INSTRUCTOR checkpoints ship pickled ``pytorch_model.bin`` files. A pickle can hold
arbitrary objects whose loading runs code, so ``.bin`` files are only read with
``torch.load(weights_only=True)``, which accepts tensors and plain containers and refuses the
rest. ``.safetensors`` files hold raw tensors only and are preferred when both exist.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .._exceptions import CheckpointError
from .checkpoint import inside, read_json, regular_file

__all__ = ["find_weight_files", "load_state_dict"]


def find_weight_files(folder: Path, stem: str) -> list[Path] | None:
    """Return the weight files of ``folder`` for ``stem`` (``model`` or ``pytorch_model``).

    Handles single files and sharded checkpoints (``<stem>.safetensors.index.json``), preferring
    safetensors. ``None`` when there are none.
    """
    for suffix in (".safetensors", ".bin"):
        single = folder / f"{stem}{suffix}"
        if single.exists():
            return [single]
        index = folder / f"{stem}{suffix}.index.json"
        if index.exists():
            weight_map = read_json(index, what="sharded checkpoint index")
            weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index} has no 'weight_map' object.")
            return [
                inside(folder, name, what=str(index)) for name in sorted(set(weight_map.values()))
            ]
    return None


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of the checkpoint in ``folder`` onto the CPU.

    Looks for ``model.safetensors`` then ``pytorch_model.bin`` (single or sharded).

    Raises
    ------
    CheckpointError
        No weight file, an unreadable file, or a pickle holding anything but tensors.
    """
    files = find_weight_files(folder, "model") or find_weight_files(folder, "pytorch_model")
    if not files:
        raise CheckpointError(
            f"no weights in {folder}: expected model.safetensors or pytorch_model.bin."
        )
    state: dict[str, torch.Tensor] = {}
    for path in files:
        tensors = _load_file(path)
        for name, tensor in tensors.items():
            # A NaN or an infinity in any weight makes every vector NaN.
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"{path}: tensor {name} holds NaN or infinite values; the weights are damaged."
                )
        state.update(tensors)
    return state


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    regular_file(path, what="weight file listed by the checkpoint")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read weight file {path}: {exc}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message goes on to explain how to load the file anyway; a refusal made for
        # safety names what it refused and nothing else.
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        named = f" (it names {found.group(1)!r})" if found else ""
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors{named}, "
            f"which could run code when loaded."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read weight file {path}: {exc}") from None
    if not isinstance(loaded, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return loaded
