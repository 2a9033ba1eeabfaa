"""Cache keys: one per (weights, instruction, settings, text), never shared by two of them.

:func:`make_key` hashes everything that shapes a vector into a hex key. The weights enter it
as their fingerprint, a string that ``sk_instructor._engine.identity`` alone computes: a hub
model's commit (``hub:<id>@<commit>``) or what a local folder's files hold.
"""

from __future__ import annotations

import functools
import hashlib
import numbers
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CACHE_FORMAT_VERSION",
    "KeySettings",
    "make_key",
]

# Part of every key: bump it whenever the meaning of a stored vector changes (pooling code,
# precision, layout) so that old entries simply stop matching instead of being served.
CACHE_FORMAT_VERSION = 1
# The backend whose keys carry no backend field (the only one before backends existed).
DEFAULT_BACKEND = "torch"
_KEY_DOMAIN = b"sk_instructor/embedding-key\x00"


def _bytes_field(raw: bytes) -> bytes:
    # Length-prefixed so that no two field sequences share an encoding ("a"+"bc" != "ab"+"c").
    return struct.pack("<Q", len(raw)) + raw


def _text_field(value: str) -> bytes:
    # "surrogatepass" keeps the encoding injective for strings holding lone surrogates, which
    # text read from badly decoded files sometimes does.
    return _bytes_field(value.encode("utf-8", "surrogatepass"))


def _check_text_field(name: str, value: object, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise TypeError(f"make_key: {name} must be a str, got {type(value).__name__} {value!r}")
    if not allow_empty and not value:
        raise ValueError(f"make_key: {name} must be a non-empty str, got ''")
    return str(value)


@functools.lru_cache(maxsize=64)
def _key_prefix(
    model_fingerprint: str,
    instruction: str,
    max_seq_length: int,
    dtype: str,
    normalize: bool,
    pooling: str,
    backend: str,
) -> Any:
    # The engine keys thousands of texts under the same settings; hashing the shared prefix
    # once and copying the hash state makes a key cost one short update per text.
    prefix = hashlib.sha256(_KEY_DOMAIN)
    prefix.update(struct.pack("<I", CACHE_FORMAT_VERSION))
    fields = [
        model_fingerprint,
        instruction,
        str(max_seq_length),
        dtype,
        "1" if normalize else "0",
        pooling,
    ]
    if backend != DEFAULT_BACKEND:
        # Only another backend adds a field: the keys of torch's vectors stay those of earlier
        # versions (caches written by them keep answering), and as every field is
        # length-prefixed, a key with one more field before the text never equals one without.
        fields.append(f"backend={backend}")
    for value in fields:
        prefix.update(_text_field(value))
    return prefix


def make_key(
    *,
    model_fingerprint: str,
    instruction: str,
    max_seq_length: int,
    dtype: str,
    normalize: bool,
    pooling: str,
    text: str,
    backend: str = DEFAULT_BACKEND,
) -> str:
    """Return the cache key of one text encoded under the given settings.

    The key is the hex SHA-256 of an unambiguous (length-prefixed) encoding of
    :data:`CACHE_FORMAT_VERSION` and every field, so changing any field, or moving
    characters from one field to the next, gives a different key.

    Parameters
    ----------
    model_fingerprint : str
        What names the weights: ``hub:<id>@<commit>`` for a hub model, or
        :func:`fingerprint_folder` of a local folder.
    instruction : str
        The instruction prepended to the text (may be empty).
    max_seq_length : int
        Truncation length in tokens.
    dtype : str
        Precision the encoder ran in, e.g. ``"float32"``.
    normalize : bool
        Whether vectors are L2-normalized.
    pooling : str
        Pooling mode, e.g. ``"mean"``.
    text : str
        The text itself.
    backend : str, default="torch"
        What ran the encoder (``"torch"``, ``"openvino"``): vectors of one backend are never
        served for another. The default adds nothing to the key, which stays that of versions
        without backends.

    Returns
    -------
    str
        64 lowercase hexadecimal characters.

    Examples
    --------
    >>> from sk_instructor._cache import make_key
    >>> key = make_key(model_fingerprint="hub:org/model@" + "0" * 40,
    ...                instruction="Represent the sentence:", max_seq_length=512,
    ...                dtype="float32", normalize=True, pooling="mean", text="hello")
    >>> len(key)
    64
    """
    model_fingerprint = _check_text_field("model_fingerprint", model_fingerprint, allow_empty=False)
    instruction = _check_text_field("instruction", instruction, allow_empty=True)
    dtype = _check_text_field("dtype", dtype, allow_empty=False)
    pooling = _check_text_field("pooling", pooling, allow_empty=False)
    text = _check_text_field("text", text, allow_empty=True)
    backend = _check_text_field("backend", backend, allow_empty=False)
    if (
        isinstance(max_seq_length, (bool, np.bool_))
        or not isinstance(max_seq_length, numbers.Integral)
        or max_seq_length <= 0
    ):
        raise TypeError(f"make_key: max_seq_length must be a positive int, got {max_seq_length!r}")
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"make_key: normalize must be a bool, got {normalize!r}")
    digest = _key_prefix(
        model_fingerprint,
        instruction,
        int(max_seq_length),
        dtype,
        bool(normalize),
        pooling,
        backend,
    ).copy()
    digest.update(_text_field(text))
    return digest.hexdigest()


@dataclass(frozen=True)
class KeySettings:
    """Everything but the instruction and the text that shapes a vector: one key recipe.

    The engine and a lookup made without the model (a warm start) key texts through the same
    object, so that both find the same entries.
    """

    model_fingerprint: str
    max_seq_length: int
    dtype: str
    normalize: bool
    pooling: str
    backend: str = DEFAULT_BACKEND

    def keys(self, pairs: Iterable[tuple[str, str]]) -> list[str]:
        """The key of each (instruction, text) pair."""
        settings = {
            "model_fingerprint": self.model_fingerprint,
            "max_seq_length": self.max_seq_length,
            "dtype": self.dtype,
            "normalize": bool(self.normalize),
            "pooling": self.pooling,
            "backend": self.backend,
        }
        return [make_key(instruction=i, text=t, **settings) for i, t in pairs]
