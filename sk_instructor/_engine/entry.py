"""The engine's one entry: (instructions, texts, settings, cache, progress) in, vectors out.

Everything that embeds goes through here: the vectorizer, the retriever (and through them
``pair_similarity``), the command line and ``sk_instructor.ray``. This module alone decides how
texts are keyed in a cache, whether the cache already answers, whether and which model is
loaded, and how texts are encoded; callers hand it settings and texts.

An :class:`Encoder` is one call's worth of work (one ``transform``, one ``embed`` run, one Ray
batch, one retriever ``fit``): the weights it uses first serve it to the end, and the
fingerprint it reports is theirs. A model folder saved over between calls is noticed by the
next :class:`Encoder`, not half-way through this one.

Nothing here imports torch: a warm start answered by the cache never loads it.

Examples
--------
>>> from sk_instructor._engine.entry import EncodingSettings, encode
>>> settings = EncodingSettings(model="hkunlp/instructor-large", device="cpu")
>>> vectors = encode(settings, ["Represent the Science title: "], ["Dark matter"])
>>> vectors.shape, vectors.dtype
((1, 768), dtype('float32'))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._cache.keys import KeySettings
from .._exceptions import CheckpointError
from .checkpoint import CheckpointSummary, summarize_model
from .chunking import DEFAULT_CHUNK_OVERLAP, ChunkedEmbeddings
from .device import dtype_name, resolve_device
from .lookup import CacheLookup

if TYPE_CHECKING:
    from .._cache import EmbeddingCache
    from .model import EmbeddingModel

__all__ = [
    "DEFAULT_CHUNK_OVERLAP",
    "ChunkedEmbeddings",
    "Encoder",
    "EncodingSettings",
    "encode",
    "resolve_device",
]

_MISSING_POLICIES = ("error", "empty", "zero")


@dataclasses.dataclass(frozen=True)
class EncodingSettings:
    """Which weights, where, and how texts become vectors: a request's settings.

    The fields are the estimators' parameters of the same names (see ``_params.py``).
    ``missing`` says what a text of ``None`` becomes: ``"zero"`` a zero vector (no encoding),
    ``"empty"`` the embedding of ``""``, ``"error"`` a ValueError (callers that can name the
    rows by their labels check before).
    """

    model: str | os.PathLike[str]
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    local_files_only: bool = False
    max_seq_length: int | None = None
    normalize: bool = True
    long_text: str = "truncate"
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    batch_size: int | None = None
    missing: str = "error"

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any], **overrides: Any) -> EncodingSettings:
        """The settings among ``values`` (an estimator's ``get_params()``, the command line's
        options), others ignored, then ``overrides``."""
        names = {field.name for field in dataclasses.fields(cls)}
        chosen = {name: value for name, value in values.items() if name in names}
        return cls(**{**chosen, **overrides})


class Encoder:
    """Embeds for one call, with one set of weights from its first vector to its last.

    Nothing is read or loaded until it is needed: :attr:`embedding_dim` reads the
    checkpoint's configs, :meth:`encode` first asks the cache and loads the model only for what
    the cache lacks. The first weights used (the loaded model's, or on a complete cache hit the
    files' fingerprint that keyed the lookup) are the only ones this encoder will use: should
    the files change during the call, it raises :class:`CheckpointError` rather than return
    vectors of two models.

    Parameters
    ----------
    settings : EncodingSettings
        The request's settings.
    cache : EmbeddingCache or None, default=None
        Where vectors are looked up and stored.
    """

    def __init__(self, settings: EncodingSettings, cache: EmbeddingCache | None = None) -> None:
        if settings.missing not in _MISSING_POLICIES:
            raise ValueError(
                f"missing must be one of {_MISSING_POLICIES}, got {settings.missing!r}"
            )
        self.settings = settings
        self.cache = cache
        self.device = resolve_device(settings.device)
        self._model: EmbeddingModel | None = None
        self._summary: CheckpointSummary | None = None
        # The fingerprint of the weights behind every vector returned so far (None: none yet).
        self._used: str | None = None

    # -- what the checkpoint says ----------------------------------------------------------------
    @property
    def summary(self) -> CheckpointSummary:
        """What the checkpoint's files say (read once per encoder, without loading)."""
        if self._summary is None:
            self._summary = summarize_model(
                self.settings.model,
                revision=self.settings.revision,
                local_files_only=self.settings.local_files_only,
            )
        return self._summary

    @property
    def embedding_dim(self) -> int:
        """The width of a vector."""
        return self._model.embedding_dim if self._model is not None else self.summary.embedding_dim

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the weights this encoder used (or, before any use, of those the
        files hold now)."""
        if self._used is not None:
            return self._used
        return self._model.fingerprint if self._model is not None else self.summary.fingerprint

    @property
    def max_seq_length(self) -> int:
        """The token limit in force: ``settings.max_seq_length``, else the checkpoint's."""
        return self.settings.max_seq_length or self.summary.max_seq_length

    @property
    def dtype_name(self) -> str:
        """The compute precision by name (``"float32"``...)."""
        return dtype_name(self.settings.dtype, self.device, self.summary.model_type)

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> EmbeddingModel:
        """The model of this encoder, loaded (or taken from the process's registry) on first
        call and the same one on every later call."""
        if self._model is None:
            from .registry import get_model

            model = get_model(
                self.settings.model,
                revision=self.settings.revision,
                device=self.device,
                dtype=self.settings.dtype,
                local_files_only=self.settings.local_files_only,
                compile=self.settings.compile,
            )
            self._check_same_weights(model.fingerprint)
            self._model = model
            # The summary is the loaded model's, read from the files that were loaded.
            self._summary = model.summary
        return self._model

    def check(self, instruction: str | None) -> None:
        """Load the model and check the settings against it: ``max_seq_length`` within the
        encoder's positions and, when given, ``instruction`` leaving room for text (a
        ValueError naming the parameter otherwise)."""
        model = self.load()
        model.check_max_seq_length(self.settings.max_seq_length)
        if instruction is not None:
            model.check_instruction(instruction, self.settings.max_seq_length)

    # -- encoding ------------------------------------------------------------------------------
    def encode(
        self, instructions: Sequence[str], texts: Sequence[str | None], *, progress: Any = None
    ) -> np.ndarray:
        """Embed ``texts[i]`` under ``instructions[i]``; float32 ``(n, embedding_dim)``.

        Identical pairs are encoded once and pairs the cache holds are not encoded at all; the
        model is loaded only if the cache lacks a vector. ``progress`` (an object with
        ``update(n)``) advances by the rows whose vector is ready.
        """
        rows, instructions, texts = self._present(instructions, texts)
        output = np.zeros((len(rows), self.embedding_dim), dtype=np.float32)
        if not len(instructions):
            return output
        lookup = None
        if self._model is None and self.cache is not None and self.settings.long_text == "truncate":
            # A warm start: keyed from the checkpoint's files alone, exactly as the engine keys.
            lookup = self._look_up(instructions, texts, progress)
            if lookup.complete:
                self._check_same_weights(self.summary.fingerprint)
                output[rows] = lookup.result()
                return output
        model = self.load()
        keys = self._keys()
        if lookup is not None and lookup.settings != keys:
            lookup = None  # the files changed between the lookup and the load: ask again
        output[rows] = model.encode(
            instructions,
            texts,
            batch_size=self.settings.batch_size,
            max_seq_length=self.settings.max_seq_length,
            long_text=self.settings.long_text,
            chunk_overlap=self.settings.chunk_overlap,
            normalize=self.settings.normalize,
            cache=self.cache,
            keys=keys,
            progress=progress,
            lookup=lookup,
        )
        return output

    def encode_chunks(
        self, instructions: Sequence[str], texts: Sequence[str | None], *, progress: Any = None
    ) -> ChunkedEmbeddings:
        """Embed each text as the chunks that fit the token window (one, the text itself, when
        it fits), whatever ``settings.long_text`` says; a text of ``None`` under
        ``missing="zero"`` gives one zero chunk. See :meth:`EmbeddingModel.encode_chunks`."""
        rows, instructions, texts = self._present(instructions, texts)
        model = self.load()
        chunks = model.encode_chunks(
            instructions,
            texts,
            chunk_overlap=self.settings.chunk_overlap,
            batch_size=self.settings.batch_size,
            max_seq_length=self.settings.max_seq_length,
            normalize=self.settings.normalize,
            cache=self.cache,
            keys=self._keys(),
            progress=progress,
        )
        n_rows = len(rows)
        if rows.all():
            return chunks
        # Zero chunks for the rows left out, merged into row order.
        kept, skipped = np.flatnonzero(rows), np.flatnonzero(~rows)
        owners = np.concatenate([kept[chunks.owners], skipped])
        order = np.argsort(owners, kind="stable")
        zeros = np.zeros((len(skipped), model.embedding_dim), dtype=np.float32)
        return ChunkedEmbeddings(
            vectors=np.concatenate([chunks.vectors, zeros])[order],
            owners=owners[order],
            weights=np.concatenate([chunks.weights, np.ones(len(skipped), np.int64)])[order],
            n_rows=n_rows,
        )

    # -- internals -----------------------------------------------------------------------------
    def _present(
        self, instructions: Sequence[str], texts: Sequence[str | None]
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """Which rows go through the model (a mask over the input), and their instructions
        and texts: missing texts become ``""`` or, under ``missing="zero"``, are left out."""
        if len(instructions) != len(texts):
            raise ValueError(
                f"{len(instructions)} instructions for {len(texts)} texts: give one per text."
            )
        missing = np.fromiter((text is None for text in texts), bool, len(texts))
        if missing.any() and self.settings.missing == "error":
            raise ValueError(
                f"texts has missing values (None) at row position(s) "
                f"{np.flatnonzero(missing)[:10].tolist()}; set missing='empty' or 'zero'."
            )
        keep = ~missing if self.settings.missing == "zero" else np.ones(len(texts), bool)
        chosen = np.flatnonzero(keep)
        return (
            keep,
            [instructions[i] for i in chosen],
            [texts[i] if texts[i] is not None else "" for i in chosen],
        )

    def _keys(self) -> KeySettings:
        """How this encoder's vectors are keyed in a cache: by the weights' fingerprint and
        every setting that shapes a vector. The one recipe, for lookups made before loading
        (from the checkpoint's files) and after (from the loaded model)."""
        summary = self._model.summary if self._model is not None else self.summary
        return KeySettings(
            model_fingerprint=summary.fingerprint,
            max_seq_length=self.settings.max_seq_length or summary.max_seq_length,
            dtype=dtype_name(self.settings.dtype, self.device, summary.model_type),
            normalize=bool(self.settings.normalize),
            pooling=summary.pooling,
        )

    def _look_up(self, instructions: list[str], texts: list[str], progress: Any) -> CacheLookup:
        return CacheLookup(
            instructions,
            texts,
            embedding_dim=self.summary.embedding_dim,
            cache=self.cache,
            settings=self._keys(),
            progress=progress,
        )

    def _check_same_weights(self, fingerprint: str) -> None:
        if self._used is not None and fingerprint != self._used:
            raise CheckpointError(
                f"the weights of {os.fspath(self.settings.model)!r} changed during this call "
                f"(from {self._used} to {fingerprint}); no vectors of the new weights were "
                f"mixed with the old. Run the call again once the files are written."
            )
        self._used = fingerprint


def encode(
    settings: EncodingSettings,
    instructions: Sequence[str],
    texts: Sequence[str | None],
    *,
    cache: EmbeddingCache | None = None,
    progress: Any = None,
) -> np.ndarray:
    """Embed ``texts[i]`` under ``instructions[i]`` in one call (one :class:`Encoder`)."""
    return Encoder(settings, cache).encode(instructions, texts, progress=progress)
