"""A loaded model: (instruction, text) pairs in, float32 embeddings out.

Callers outside the engine reach it through ``entry.py`` (which decides keys, lookups and
loading); this module encodes. The path of a text, each step in its own module::

    tokenization (instruction + text, instruction mask)
      -> batching (length-sorted, token-budgeted batches; on the CPU several run at once,
         see cpu_streams)
      -> stages/: transformer -> pooling -> dense -> normalize
      -> the embedding cache (store / reuse) -> float32 numpy rows in input order
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._cache.keys import KeySettings
from .._exceptions import CheckpointError
from .._warnings import warn
from .batching import DEFAULT_TOKEN_BUDGET, plan_batches
from .checkpoint import CheckpointSummary, ResolvedModel, read_stages, summarize
from .chunking import (
    DEFAULT_CHUNK_OVERLAP,
    ChunkedEmbeddings,
    RowProgress,
    plan_chunks,
)
from .cpu_streams import cpu_layout, run_in_streams
from .device import check_backend, dtype_name
from .lookup import CacheLookup
from .padded_batch import padded_batch
from .stages import LoadSettings, load_stages
from .stages.normalize import Normalize
from .stages.pooling import Pooling
from .stages.transformer import Transformer

if TYPE_CHECKING:
    from .._cache import EmbeddingCache

__all__ = ["EmbeddingModel"]

# Unique texts tokenized at a time. Bounds the memory of token ids for huge inputs and lets an
# accelerator encode one block while the CPU tokenizes the next.
_BLOCK_SIZE = 8192
# On accelerators the first block is small and the next ones double up to _BLOCK_SIZE: the device
# starts after a short tokenization instead of waiting for 8192 texts, and each later block is
# tokenized while the device encodes the one before.
_FIRST_BLOCK_SIZE = 512
# Times a model folder is read again when its files change while they are read.
_LOAD_ATTEMPTS = 3
# On accelerators, results stay on the device and are copied back in groups of this many rows:
# a copy per batch would make the CPU wait for the GPU after every batch.
_DEVICE_FLUSH_ROWS = 4096


class EmbeddingModel:
    """A loaded sentence-transformers checkpoint ready to embed (instruction, text) pairs.

    Obtain instances through :func:`sk_instructor._engine.registry.get_model`, so that each
    checkpoint is loaded once per process and shared. ``pipelined`` (default: on accelerators)
    tokenizes the next block in a thread while the device encodes, and copies results back in
    groups.

    The stages run in the order of the checkpoint's ``modules.json``, except that the
    ``normalize`` argument of :meth:`encode` decides about unit length: ``True`` ends the chain
    with a Normalize stage whether the checkpoint has one or not (cosine search needs unit
    vectors), ``False`` leaves any Normalize stage out.
    """

    def __init__(
        self,
        resolved: ResolvedModel,
        *,
        device: str,
        dtype: str = "auto",
        pipelined: bool | None = None,
        implementation: str = "auto",
        compile: bool = False,
        backend: str = "torch",
    ) -> None:
        self.device = device
        self._resolved = resolved
        # Refused before any file is read: a backend that cannot run here, or with these
        # settings (see device.check_backend).
        check_backend(backend, device=device, dtype=dtype, compile=compile)
        self.backend = backend
        settings = LoadSettings(
            device=device,
            dtype=dtype,
            implementation=implementation,
            compile=compile,
            backend=backend,
        )
        # The fingerprint names exactly the weights loaded: it is taken before and after
        # reading them, and a folder rewritten in between is read again.
        for _ in range(_LOAD_ATTEMPTS):
            before = resolved.current_fingerprint()
            stages, width = _load_stages(resolved.folder, settings)
            after = resolved.current_fingerprint()
            if before == after:
                break
        else:
            raise CheckpointError(
                f"the files of {resolved.folder} kept changing while they were read; load the "
                f"model again once they are written."
            )
        # What the files say, read without loading, must be what was loaded: a lookup made
        # from it before loading (a warm start) then keys exactly what the engine would.
        summary = summarize(resolved.folder, after)
        if summary.embedding_dim != width:
            raise CheckpointError(
                f"{resolved.folder}: its configs describe {summary.embedding_dim}-dimensional "
                f"vectors, but its stages give {width}."
            )
        self.transformer: Transformer = stages[0]
        self._pooling: Pooling = next(stage for stage in stages if isinstance(stage, Pooling))
        # The chain after the encoder, with the checkpoint's Normalize stages taken out:
        # ``encode(normalize=...)`` decides whether one runs at the end.
        self._later_stages = [stage for stage in stages[1:] if not isinstance(stage, Normalize)]
        self._normalize = Normalize(width)
        self.embedding_dim: int = width
        self.dtype: torch.dtype = self.transformer.dtype
        self.dtype_name: str = dtype_name(dtype, device, self.transformer.model_type)
        self.model_type = self.transformer.model_type
        self.max_seq_length = self.transformer.max_seq_length
        self.implementation = self.transformer.implementation
        self._tokenizer = self.transformer.tokenizer
        self.fingerprint: str = after
        # What the loaded files say; the entry keys this model's vectors from it.
        self.summary: CheckpointSummary = summary
        # On an accelerator the CPU works ahead: it tokenizes the next block in a thread and
        # leaves results on the device, copied back in groups. On the CPU the two would only
        # compete for the same cores (tests force it there with pipelined=True).
        self._pipelined = not device.startswith("cpu") if pipelined is None else pipelined
        # On the CPU, batches run side by side in streams (cpu_streams), except through a
        # compiled encoder: inductor's code keeps the thread count it was compiled at.
        self._on_cpu = device.startswith("cpu")
        self._streams_allowed = not compile
        self._counter_lock = threading.Lock()
        self.n_encoded = 0

    def is_current(self) -> bool:
        """Whether the checkpoint's files still hold the weights that were loaded."""
        return self._resolved.current_fingerprint() == self.fingerprint

    @property
    def pooling_description(self) -> str:
        return self._pooling.description

    def instruction_length(self, instruction: str, max_seq_length: int | None = None) -> int:
        """Tokens of ``instruction`` that pooling leaves out (0 when the quirk masks nothing)."""
        return self._tokenizer.instruction_length(
            instruction, max_seq_length or self.max_seq_length
        )

    def check_instruction(self, instruction: str, max_seq_length: int | None = None) -> None:
        """Raise ValueError when ``instruction`` leaves no room for text in the window."""
        self._tokenizer.check_room_for_text(instruction, self.check_max_seq_length(max_seq_length))

    # -- the public entry point ----------------------------------------------------------------
    def encode(
        self,
        instructions: Sequence[str],
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        token_budget: int | None = None,
        max_seq_length: int | None = None,
        normalize: bool = True,
        cache: EmbeddingCache | None = None,
        keys: KeySettings | None = None,
        progress: Any = None,
        long_text: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        lookup: CacheLookup | None = None,
    ) -> np.ndarray:
        """Embed ``texts[i]`` under ``instructions[i]``; returns float32 ``(n, embedding_dim)``.

        Identical pairs are encoded once; pairs found in ``cache`` are not encoded at all, and
        every pair encoded is stored there, keyed by ``keys`` (the entry's recipe, required
        with a cache). Results do not depend on batch composition or input
        order beyond float32 rounding (~1e-7).

        ``progress`` is an optional object with ``update(n)`` (e.g. a tqdm bar) advanced by
        the number of input rows whose vector is ready.

        ``long_text="truncate"`` cuts a pair longer than ``max_seq_length`` tokens (with a
        warning); ``"chunk"`` embeds its overlapping chunks instead (:meth:`encode_chunks`) and
        returns their mean weighted by text tokens, unit length if ``normalize``.

        ``lookup`` is the :class:`CacheLookup` of these same pairs made under ``keys`` before
        the model was loaded (a warm start that found some vectors): what it lacks is encoded
        without asking the cache again.
        """
        if long_text == "chunk":
            chunks = self.encode_chunks(
                instructions,
                texts,
                chunk_overlap=chunk_overlap,
                batch_size=batch_size,
                token_budget=token_budget,
                max_seq_length=max_seq_length,
                normalize=normalize,
                cache=cache,
                keys=keys,
                progress=progress,
            )
            return chunks.pool(normalize=normalize)
        if long_text != "truncate":
            raise ValueError(f"long_text must be 'truncate' or 'chunk', got {long_text!r}.")
        if len(instructions) != len(texts):
            raise ValueError(
                f"{len(instructions)} instructions for {len(texts)} texts: give one per text."
            )
        max_len = self.check_max_seq_length(max_seq_length)
        n_rows = len(texts)
        if n_rows == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)

        for instruction in set(instructions):
            self._tokenizer.check_room_for_text(instruction, max_len)
        if cache is not None:
            self._check_keys(keys, max_len, normalize)
        if lookup is None or lookup.settings != keys or lookup.cache is not cache:
            lookup = CacheLookup(
                instructions,
                texts,
                embedding_dim=self.embedding_dim,
                cache=cache,
                settings=keys,
                progress=progress,
            )
        budget = token_budget or DEFAULT_TOKEN_BUDGET.get(torch.device(self.device).type, 2048)
        n_truncated = self._encode_missing_pairs(
            lookup, max_len, budget, batch_size, normalize=normalize, progress=progress
        )
        if n_truncated:
            # Once per model and limit: a grid search refitting a hundred clones on the same
            # texts would otherwise say it a hundred times.
            warn(
                f"{n_truncated} of {len(lookup.todo)} texts encoded were longer than "
                f"max_seq_length={max_len} tokens (instruction included) and were truncated "
                f"(further truncations at this limit are not reported).",
                UserWarning,
                cause=("truncation", self.fingerprint, max_len),
            )
        return lookup.result()

    def _encode_missing_pairs(
        self,
        lookup: CacheLookup,
        max_len: int,
        budget: int,
        batch_size: int | None,
        *,
        normalize: bool,
        progress: Any,
    ) -> int:
        """Encode the pairs ``lookup`` lacks into its vectors (storing them in its cache), in
        token-budgeted batches; returns how many were truncated."""
        pairs, vectors_of_pairs, keys, counts = (
            lookup.pairs,
            lookup.vectors,
            lookup.keys,
            lookup.counts,
        )

        def plan(lengths: np.ndarray) -> list[np.ndarray]:
            return plan_batches(
                lengths,
                token_budget=budget,
                max_batch_size=batch_size,
                pad_to=self.transformer.pad_to,
            )

        def flush(pending: list[tuple[np.ndarray, torch.Tensor]]) -> None:
            self._flush(pending, vectors_of_pairs, keys, lookup.cache, counts, progress)

        n_truncated = 0
        with torch.inference_mode():
            for block, tokenized, batches in self._prepared_blocks(
                pairs, lookup.todo, max_len, plan
            ):
                n_truncated += tokenized.n_truncated
                pending: list[tuple[np.ndarray, torch.Tensor]] = []
                pending_rows = 0
                with self._batch_results(tokenized, batches, normalize=normalize) as results:
                    for batch, vectors in zip(batches, results, strict=True):
                        pending.append((block[batch], vectors))
                        pending_rows += len(batch)
                        if not self._pipelined or pending_rows >= _DEVICE_FLUSH_ROWS:
                            flush(pending)
                            pending, pending_rows = [], 0
                flush(pending)
        return n_truncated

    @contextmanager
    def _batch_results(
        self, tokenized, batches: list[np.ndarray], *, normalize: bool
    ) -> Iterator[Iterator[torch.Tensor]]:
        """The vectors of each batch, in order: on an accelerator computed one batch after the
        other; on the CPU several batches at once, in the streams of ``cpu_streams`` (torch's
        threads set for them while the results are read, and put back after)."""

        def run(batch: np.ndarray) -> torch.Tensor:
            return self._forward_splitting_on_oom(
                [tokenized.input_ids[i] for i in batch],
                tokenized.instruction_lengths[batch],
                normalize=normalize,
            )

        if not self._on_cpu:
            yield map(run, batches)
            return
        with cpu_layout(len(batches), allow_streams=self._streams_allowed) as layout:
            with closing(run_in_streams(run, batches, layout.streams)) as results:
                yield results

    def encode_chunks(
        self,
        instructions: Sequence[str],
        texts: Sequence[str],
        *,
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        batch_size: int | None = None,
        token_budget: int | None = None,
        max_seq_length: int | None = None,
        normalize: bool = True,
        cache: EmbeddingCache | None = None,
        keys: KeySettings | None = None,
        progress: Any = None,
    ) -> ChunkedEmbeddings:
        """Embed each text as chunks that fit ``max_seq_length``: one chunk, the text itself,
        when it fits; overlapping windows sharing ``chunk_overlap`` tokens otherwise (see
        :mod:`.chunking`).

        Chunks are ordinary texts to :meth:`encode` (truncate mode): identical chunks are
        encoded once, the cache keys them by their own instruction and text, and they are
        batched by the token budget with everything else, so a long document never makes one
        large batch. ``progress`` advances in input rows, by the share of chunks encoded.

        Returns
        -------
        ChunkedEmbeddings
            The chunk vectors (unit length if ``normalize``), in row order and reading order
            within a row, the input row of each, and its weight in the row's mean (its text
            tokens).
        """
        if len(instructions) != len(texts):
            raise ValueError(
                f"{len(instructions)} instructions for {len(texts)} texts: give one per text."
            )
        max_len = self.check_max_seq_length(max_seq_length)
        plan = plan_chunks(
            self._tokenizer, list(instructions), list(texts), max_len, int(chunk_overlap)
        )
        vectors = self.encode(
            plan.instructions,
            plan.texts,
            batch_size=batch_size,
            token_budget=token_budget,
            max_seq_length=max_len,
            normalize=normalize,
            cache=cache,
            keys=keys,
            progress=None
            if progress is None
            else RowProgress(progress, len(plan.texts), len(texts)),
        )
        return ChunkedEmbeddings(
            vectors=vectors, owners=plan.owners, weights=plan.weights, n_rows=len(texts)
        )

    def check_max_seq_length(self, max_seq_length: int | None) -> int:
        """The token limit to use: the checkpoint's when ``None``, else ``max_seq_length`` once
        checked against the encoder's position table (ValueError when it is too long)."""
        if max_seq_length is None:
            return self.max_seq_length
        limit = self.transformer.max_positions
        if limit is not None and max_seq_length > limit:
            raise ValueError(
                f"max_seq_length={max_seq_length} exceeds the {limit} positions this "
                f"{self.model_type} encoder has."
            )
        return int(max_seq_length)

    # -- internals -----------------------------------------------------------------------------
    def _check_keys(self, keys: KeySettings | None, max_len: int, normalize: bool) -> None:
        """Refuse to store vectors under a recipe that does not describe them."""
        if keys is None:
            raise ValueError("encoding with a cache needs the keys' recipe (keys=...).")
        described = (
            keys.model_fingerprint,
            keys.max_seq_length,
            keys.dtype,
            keys.normalize,
            keys.pooling,
            keys.backend,
        )
        actual = (
            self.fingerprint,
            max_len,
            self.dtype_name,
            bool(normalize),
            self.pooling_description,
            self.backend,
        )
        if described != actual:
            raise ValueError(f"the cache keys describe {described}; this model encodes {actual}.")

    def _prepared_blocks(self, pairs, todo: np.ndarray, max_len: int, plan):
        """Yield (unique indices, tokenized block, its batches); on an accelerator the next
        block is tokenized and planned in a thread while the device encodes the current one
        (on the CPU the two would only compete for the same cores)."""
        blocks = _split_blocks(todo, pipelined=self._pipelined)

        def prepare(block: np.ndarray):
            tokenized = self._tokenizer.tokenize(
                [pairs[i][0] for i in block], [pairs[i][1] for i in block], max_len
            )
            return tokenized, plan(tokenized.lengths)

        if not self._pipelined or len(blocks) < 2:
            for block in blocks:
                yield (block, *prepare(block))
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(prepare, blocks[0])
            for position, block in enumerate(blocks):
                prepared = future.result()
                if position + 1 < len(blocks):
                    future = pool.submit(prepare, blocks[position + 1])
                yield (block, *prepared)

    def _flush(self, pending, unique_vectors, keys, cache, counts, progress) -> None:
        """Copy finished vectors to the host, store them in the cache, advance the progress."""
        if not pending:
            return
        rows = np.concatenate([indices for indices, _ in pending])
        vectors = torch.cat([vectors for _, vectors in pending]).cpu().numpy()
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            # Never a wrong vector: none of these is returned or cached.
            raise FloatingPointError(
                f"the encoder gave NaN or infinite values for {int((~finite).sum())} of "
                f"{len(rows)} texts in {self.dtype_name}: the activations "
                f"overflow this precision; use dtype='float32' (or 'bfloat16' on a GPU)."
            )
        unique_vectors[rows] = vectors
        with self._counter_lock:
            self.n_encoded += len(rows)
        if cache is not None:
            cache.put_many([keys[i] for i in rows], vectors)
            cache.record_encoded(len(rows))
        if progress is not None:
            progress.update(int(counts[rows].sum()))

    def _forward_splitting_on_oom(
        self, input_ids: list[list[int]], instruction_lengths: np.ndarray, *, normalize: bool
    ) -> torch.Tensor:
        """Run one batch; on an accelerator out-of-memory error, halve it and retry each half,
        so that a batch too large for the device costs time, never rows."""
        try:
            return self._forward(input_ids, instruction_lengths, normalize=normalize)
        except torch.cuda.OutOfMemoryError as exc:
            if len(input_ids) == 1:
                raise MemoryError(
                    f"the {self.device} device ran out of memory on a single text of "
                    f"{len(input_ids[0])} tokens; lower max_seq_length or use another device."
                ) from exc
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(input_ids) // 2
            first = self._forward_splitting_on_oom(
                input_ids[:half], instruction_lengths[:half], normalize=normalize
            )
            second = self._forward_splitting_on_oom(
                input_ids[half:], instruction_lengths[half:], normalize=normalize
            )
            return torch.cat([first, second])

    def _forward(
        self, input_ids: list[list[int]], instruction_lengths: np.ndarray, *, normalize: bool
    ) -> torch.Tensor:
        """Pad one batch and run it through every stage; float32 vectors on the device."""
        features = padded_batch(
            input_ids,
            instruction_lengths,
            pad_token_id=self._tokenizer.pad_token_id,
            to_device=self._to_device,
            pad_to=self.transformer.pad_to,
        )
        features = self.transformer(features)
        for stage in self._later_stages:
            features = stage(features)
        if normalize:
            features = self._normalize(features)
        return features["sentence_embedding"].float()

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device == "cpu":
            return tensor
        if self.device.startswith("cuda"):
            # Pinned host memory lets the copy run asynchronously with the previous batch.
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)


def _load_stages(folder, settings: LoadSettings) -> tuple[list, int]:
    """Load every stage of ``modules.json`` in order; returns them and the output width."""
    return load_stages(read_stages(folder), settings)


def _split_blocks(todo: np.ndarray, *, pipelined: bool) -> list[np.ndarray]:
    """Cut ``todo`` into tokenization blocks: equal ones of ``_BLOCK_SIZE`` on the CPU; on an
    accelerator, ``_FIRST_BLOCK_SIZE`` first and doubling from there."""
    blocks = []
    start = 0
    size = _FIRST_BLOCK_SIZE if pipelined else _BLOCK_SIZE
    while start < len(todo):
        blocks.append(todo[start : start + size])
        start += size
        size = min(size * 2, _BLOCK_SIZE)
    return blocks
