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

With a cache shared by processes (a :class:`DiskCache`, GridSearchCV workers), what the cache
lacks is claimed before it is encoded (:func:`sk_instructor._cache.coordination.encode_once`):
each key is encoded by one process, the others read its vector, and a process whose every
missing key another process claimed never loads the model.

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

from .._cache.coordination import encode_once
from .._cache.keys import KeySettings
from .._exceptions import CheckpointError
from .._warnings import warn
from .checkpoint import CheckpointSummary, summarize_model
from .chunking import DEFAULT_CHUNK_OVERLAP, ChunkedEmbeddings, RowProgress, plan_chunks
from .device import BACKENDS, check_backend, dtype_name, resolve_device
from .fine_tuning import FineTuneResult, TrainingSettings, fine_tune
from .lookup import CacheLookup

if TYPE_CHECKING:
    from .._cache import EmbeddingCache
    from .model import EmbeddingModel

__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_OVERLAP",
    "ChunkedEmbeddings",
    "Encoder",
    "EncodingSettings",
    "FineTuneResult",
    "TrainingSettings",
    "encode",
    "fine_tune",
    "resolve_device",
]

_MISSING_POLICIES = ("error", "empty", "zero")
# Keys claimed at a time in a cache shared by processes: processes that lack the same texts
# share them out by blocks. On a CPU a block is seconds of work, and length-sorted batches
# within it waste no more padding than across all texts; an accelerator encodes a larger block
# at full speed (the engine tokenizes its next part while the device encodes).
_CLAIM_BLOCK = {"cpu": 1024}
_ACCELERATOR_CLAIM_BLOCK = 8192


class _WeightsChanged(Exception):
    """The files changed between a lookup made from them and the model's load (inside only)."""


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
    backend: str = "torch"
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
        self.device = resolve_device(settings.device, settings.backend)
        # A backend that cannot run with these settings, or is not installed, is refused
        # here, before the cache is asked: a warm start must not hide it until a cold one.
        check_backend(
            settings.backend,
            device=self.device,
            dtype=settings.dtype,
            compile=bool(settings.compile),
        )
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
                backend=self.settings.backend,
            )
            self._check_same_weights(model.fingerprint)
            self._model = model
            # The summary is the loaded model's, read from the files that were loaded.
            self._summary = model.summary
            _warn_if_a_worker_on_an_accelerator(self.device, self.settings.model)
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
        if self.settings.long_text == "chunk":
            chunks = self._chunks(instructions, texts, progress)
            output[rows] = chunks.pool(normalize=self.settings.normalize)
        elif self.settings.long_text == "truncate":
            output[rows] = self._encode_pairs(instructions, texts, progress)
        else:
            raise ValueError(
                f"long_text must be 'truncate' or 'chunk', got {self.settings.long_text!r}."
            )
        return output

    def encode_chunks(
        self, instructions: Sequence[str], texts: Sequence[str | None], *, progress: Any = None
    ) -> ChunkedEmbeddings:
        """Embed each text as the chunks that fit the token window (one, the text itself, when
        it fits), whatever ``settings.long_text`` says; a text of ``None`` under
        ``missing="zero"`` gives one zero chunk. See :meth:`EmbeddingModel.encode_chunks`."""
        rows, instructions, texts = self._present(instructions, texts)
        chunks = self._chunks(instructions, texts, progress)
        n_rows = len(rows)
        if rows.all():
            return chunks
        # Zero chunks for the rows left out, merged into row order.
        kept, skipped = np.flatnonzero(rows), np.flatnonzero(~rows)
        owners = np.concatenate([kept[chunks.owners], skipped])
        order = np.argsort(owners, kind="stable")
        zeros = np.zeros((len(skipped), self.embedding_dim), dtype=np.float32)
        return ChunkedEmbeddings(
            vectors=np.concatenate([chunks.vectors, zeros])[order],
            owners=owners[order],
            weights=np.concatenate([chunks.weights, np.ones(len(skipped), np.int64)])[order],
            n_rows=n_rows,
        )

    # -- internals -----------------------------------------------------------------------------
    def _encode_pairs(self, instructions: list[str], texts: list[str], progress: Any) -> np.ndarray:
        """The vector of each (instruction, text), truncated to the window: from the cache
        where it has it, else encoded here or, when another process sharing the cache claimed
        it first, read once that process stored it. The model loads only to encode."""
        if self.cache is None:
            model = self.load()
            return model.encode(
                instructions,
                texts,
                **self._model_options(),
                cache=None,
                keys=self._keys(),
                progress=progress,
            )
        while True:
            # Keyed, before the model loads, from the checkpoint's files alone, exactly as the
            # engine keys (a warm start answers here).
            lookup = self._look_up(instructions, texts, progress)
            try:
                self._complete(lookup, instructions, texts, progress)
            except _WeightsChanged:
                continue  # the files changed between the lookup and the load: ask again
            self._check_same_weights(lookup.settings.model_fingerprint)
            return lookup.result()

    def _complete(
        self, lookup: CacheLookup, instructions: list[str], texts: list[str], progress: Any
    ) -> None:
        """Get every vector ``lookup`` lacks: each claimed and encoded here, or read once the
        process that claimed it first stored it."""
        pairs = lookup.todo

        def encode(positions: np.ndarray) -> None:
            self._encode_into(lookup, pairs[positions], instructions, texts, progress)

        def found(positions: np.ndarray, vectors: list[np.ndarray]) -> None:
            lookup.fill(pairs[positions], vectors, progress)

        encode_once(
            self.cache,
            [lookup.keys[pair] for pair in pairs],
            dim=lookup.vectors.shape[1],
            encode=encode,
            found=found,
            block=_CLAIM_BLOCK.get(self.device, _ACCELERATOR_CLAIM_BLOCK),
        )

    def _encode_into(
        self,
        lookup: CacheLookup,
        pairs: np.ndarray,
        instructions: list[str],
        texts: list[str],
        progress: Any,
    ) -> None:
        """Encode the ``pairs`` of ``lookup`` into it (the model stores them in the cache)."""
        model = self.load()
        if self._keys() != lookup.settings:
            raise _WeightsChanged
        rest = np.setdiff1d(lookup.todo, pairs, assume_unique=True)
        lookup.todo = pairs
        model.encode(
            instructions,
            texts,
            **self._model_options(),
            cache=self.cache,
            keys=lookup.settings,
            progress=progress,
            lookup=lookup,
        )
        lookup.todo = rest

    def _model_options(self) -> dict[str, Any]:
        return {
            "batch_size": self.settings.batch_size,
            "max_seq_length": self.settings.max_seq_length,
            "normalize": self.settings.normalize,
        }

    def _chunks(
        self, instructions: list[str], texts: list[str], progress: Any
    ) -> ChunkedEmbeddings:
        """Each text as the chunks that fit the window (see :meth:`encode_chunks`), every
        chunk a text of its own to the cache and the encoder (:meth:`_encode_pairs`)."""
        model = self.load()
        max_len = model.check_max_seq_length(self.settings.max_seq_length)
        plan = plan_chunks(
            model.transformer.tokenizer,
            instructions,
            texts,
            max_len,
            int(self.settings.chunk_overlap),
        )
        vectors = self._encode_pairs(
            plan.instructions,
            plan.texts,
            None if progress is None else RowProgress(progress, len(plan.texts), len(texts)),
        )
        return ChunkedEmbeddings(
            vectors=vectors, owners=plan.owners, weights=plan.weights, n_rows=len(texts)
        )

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
            backend=self.settings.backend,
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


def _warn_if_a_worker_on_an_accelerator(device: str, model: object) -> None:
    """Say, once per process, that a worker process loads a model of its own onto the device:
    with GridSearchCV(n_jobs=k), k copies share one GPU."""
    if device.startswith("cpu"):
        return
    import multiprocessing

    if multiprocessing.parent_process() is None:
        return
    warn(
        f"a worker process (pid {os.getpid()}) loads its own copy of {os.fspath(model)!r} onto "
        f"{device}: every worker of a parallel search (GridSearchCV(n_jobs=k) makes k) holds "
        f"one in the device's memory, and they take turns on it. Encode in one process "
        f"instead: fit_transform the texts under each instruction first with a disk cache "
        f"(cache='some/folder'), then run the search; its workers read every vector from the "
        f"cache and load no model. Or search with n_jobs=1: the GPU is the parallelism.",
        RuntimeWarning,
        cause=("model per worker on an accelerator", device),
    )


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
