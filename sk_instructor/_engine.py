"""The encoding engine: (instruction, text) pairs in, float32 embeddings out.

Every component (the vectorizer, the retriever, the command line, the Ray integration) goes
through :class:`EmbeddingModel.encode`. The path of a text, each step in its own module::

    _tokenization (instruction + text, instruction mask)
      -> _batching (length-sorted, token-budgeted batches)
      -> encoder forward (_transformer)
      -> _pooling -> _dense -> _normalize
      -> _cache (store / reuse) -> float32 numpy rows in input order
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ._batching import DEFAULT_TOKEN_BUDGET, plan_batches
from ._checkpoint import ResolvedModel, read_stages
from ._dense import load_dense
from ._device import resolve_dtype
from ._exceptions import CheckpointError
from ._normalize import l2_normalize
from ._pooling import load_pooling
from ._tokenization import Tokenizer
from ._transformer import load_transformer

if TYPE_CHECKING:
    import torch

    from ._cache import EmbeddingCache

__all__ = ["EmbeddingModel"]

# Unique texts tokenized at a time. Bounds the memory of token ids for huge inputs and lets an
# accelerator encode one block while the CPU tokenizes the next.
_BLOCK_SIZE = 8192
# On accelerators the first block is small and the next ones double up to _BLOCK_SIZE: the device
# starts after a short tokenization instead of waiting for 8192 texts, and each later block is
# tokenized while the device encodes the one before.
_FIRST_BLOCK_SIZE = 512
# On accelerators, results stay on the device and are copied back in groups of this many rows:
# a copy per batch would make the CPU wait for the GPU after every batch.
_DEVICE_FLUSH_ROWS = 4096


class EmbeddingModel:
    """A loaded sentence-transformers checkpoint ready to embed (instruction, text) pairs.

    Obtain instances through ``sk_instructor._registry.get_model`` so that each checkpoint is
    loaded once per process and shared.
    """

    def __init__(self, resolved: ResolvedModel, *, device: str, dtype: str = "auto") -> None:

        self.device = device
        self._resolved = resolved
        stages = read_stages(resolved.folder)
        transformer, self.dtype = load_transformer(
            stages[0].folder,
            device=device,
            dtype_for=lambda model_type: resolve_dtype(dtype, device, model_type),
        )
        self.model_type = transformer.model_type
        self.max_seq_length = transformer.max_seq_length
        self._encoder = transformer.model
        self._tokenizer = Tokenizer(transformer.tokenizer, do_lower_case=transformer.do_lower_case)
        self._pooling = None
        self._dense: list[torch.nn.Module] = []
        self.checkpoint_normalizes = False
        width = transformer.hidden_size
        for stage in stages[1:]:
            if stage.kind == "pooling":
                self._pooling = load_pooling(stage.folder, hidden_size=width)
                width = self._pooling.output_dim
            elif stage.kind == "dense":
                dense = load_dense(stage.folder, in_features=width).to(device)
                self._dense.append(dense)
                width = dense[0].out_features
            elif stage.kind == "normalize":
                self.checkpoint_normalizes = True
            else:  # pragma: no cover - read_stages only lets the kinds above through
                raise CheckpointError(f"unexpected stage {stage.kind!r}")
        self.embedding_dim = width
        self._identity = resolved.identity
        # On an accelerator the CPU works ahead: it tokenizes the next block in a thread and
        # leaves results on the device, copied back in groups. On the CPU the two would only
        # compete for the same cores.
        self._pipelined = not device.startswith("cpu")
        self._counter_lock = threading.Lock()
        self.n_encoded = 0

    # -- identity, for cache keys ------------------------------------------------------------
    @property
    def identity(self) -> str:
        """``hub:<id>@<commit>`` for hub models, a fingerprint of the files for local folders."""
        if self._identity is None:
            from ._fingerprint import fingerprint_folder

            self._identity = fingerprint_folder(self._resolved.folder)
        return self._identity

    @property
    def pooling_description(self) -> str:
        return "+".join(self._pooling.modes)

    @property
    def folder(self):
        return self._resolved.folder

    def instruction_length(self, instruction: str, max_seq_length: int | None = None) -> int:
        """Tokens of ``instruction`` that pooling leaves out (0 when the quirk masks nothing)."""
        return self._tokenizer.instruction_length(
            instruction, max_seq_length or self.max_seq_length
        )

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
        progress: Any = None,
    ) -> np.ndarray:
        """Embed ``texts[i]`` under ``instructions[i]``; returns float32 ``(n, embedding_dim)``.

        Identical pairs are encoded once; pairs found in ``cache`` are not encoded at all, and
        every pair encoded is stored there. Results do not depend on batch composition or input
        order beyond float32 rounding (~1e-7).

        ``progress`` is an optional object with ``update(n)`` (e.g. a tqdm bar) advanced by
        the number of input rows whose vector is ready.
        """
        import torch

        if len(instructions) != len(texts):
            raise ValueError(
                f"{len(instructions)} instructions for {len(texts)} texts: give one per text."
            )
        max_len = self.check_max_seq_length(max_seq_length)
        n_rows = len(texts)
        if n_rows == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)

        # Deduplicate: the instruction and the stripped text fully determine the model input.
        unique_index: dict[tuple[str, str], int] = {}
        inverse = np.empty(n_rows, dtype=np.int64)
        for row, (instruction, text) in enumerate(zip(instructions, texts, strict=True)):
            inverse[row] = unique_index.setdefault((instruction, text.strip()), len(unique_index))
        pairs = list(unique_index)
        unique_vectors = np.zeros((len(pairs), self.embedding_dim), dtype=np.float32)
        counts = np.bincount(inverse, minlength=len(pairs))

        todo = np.arange(len(pairs))
        keys: list[str] | None = None
        if cache is not None:
            keys = self._cache_keys(pairs, max_len=max_len, normalize=normalize)
            found = cache.get_many(keys)
            hit = np.array([vector is not None for vector in found], dtype=bool)
            for position in np.flatnonzero(hit):
                unique_vectors[position] = found[position]
            todo = np.flatnonzero(~hit)
            if progress is not None and hit.any():
                progress.update(int(counts[hit].sum()))

        budget = token_budget or DEFAULT_TOKEN_BUDGET.get(torch.device(self.device).type, 2048)
        n_truncated = 0

        def plan(lengths: np.ndarray) -> list[np.ndarray]:
            return plan_batches(lengths, token_budget=budget, max_batch_size=batch_size)

        with torch.inference_mode():
            for block, tokenized, batches in self._prepared_blocks(pairs, todo, max_len, plan):
                n_truncated += tokenized.n_truncated
                pending: list[tuple[np.ndarray, torch.Tensor]] = []
                pending_rows = 0
                for batch in batches:
                    vectors = self._forward_splitting_on_oom(
                        [tokenized.input_ids[i] for i in batch],
                        tokenized.instruction_lengths[batch],
                        normalize=normalize,
                    )
                    pending.append((block[batch], vectors))
                    pending_rows += len(batch)
                    if not self._pipelined or pending_rows >= _DEVICE_FLUSH_ROWS:
                        self._flush(pending, unique_vectors, keys, cache, counts, progress)
                        pending, pending_rows = [], 0
                self._flush(pending, unique_vectors, keys, cache, counts, progress)
        if n_truncated:
            warnings.warn(
                f"{n_truncated} of {len(todo)} texts encoded were longer than max_seq_length="
                f"{max_len} tokens (instruction included) and were truncated.",
                UserWarning,
                stacklevel=3,
            )
        return unique_vectors[inverse]

    def check_max_seq_length(self, max_seq_length: int | None) -> int:
        """The token limit to use: the checkpoint's when ``None``, else ``max_seq_length`` once
        checked against the encoder's position table (ValueError when it is too long)."""
        if max_seq_length is None:
            return self.max_seq_length
        limit = getattr(self._encoder.config, "max_position_embeddings", None)
        if isinstance(limit, int) and max_seq_length > limit:
            raise ValueError(
                f"max_seq_length={max_seq_length} exceeds the {limit} positions this "
                f"{self.model_type} encoder has."
            )
        return int(max_seq_length)

    # -- internals -----------------------------------------------------------------------------
    def _cache_keys(self, pairs: list[tuple[str, str]], *, max_len: int, normalize: bool):
        from ._cache import make_key

        common = {
            "model_fingerprint": self.identity,
            "max_seq_length": max_len,
            "dtype": str(self.dtype).replace("torch.", ""),
            "normalize": bool(normalize),
            "pooling": self.pooling_description,
        }
        return [make_key(instruction=i, text=t, **common) for i, t in pairs]

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
        import torch

        if not pending:
            return
        rows = np.concatenate([indices for indices, _ in pending])
        vectors = torch.cat([vectors for _, vectors in pending]).cpu().numpy()
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
        import torch

        try:
            return self._forward(input_ids, instruction_lengths, normalize=normalize)
        except _out_of_memory_errors() as exc:
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
        """Pad one batch, run the encoder and the later stages; float32 vectors on the device."""
        import torch

        lengths = np.fromiter((len(row_ids) for row_ids in input_ids), np.int64, len(input_ids))
        width = int(lengths.max())
        ids = np.full((len(input_ids), width), self._tokenizer.pad_token_id, dtype=np.int64)
        for row, row_ids in enumerate(input_ids):
            ids[row, : len(row_ids)] = row_ids
        # Only the token ids and two numbers per row travel to the device; the masks are built
        # there.
        ids_t, lengths_t, skipped_t = (
            self._to_device(torch.from_numpy(array))
            for array in (ids, lengths, np.asarray(instruction_lengths, dtype=np.int64))
        )
        positions = torch.arange(width, device=ids_t.device)
        attention_t = positions[None, :] < lengths_t[:, None]
        # The encoder sees the instruction; pooling does not (rule 6 of the reference).
        pooling_t = attention_t & (positions[None, :] >= skipped_t[:, None])
        # A batch without padding (common: batches are length-sorted) needs no attention mask.
        # Saying so here spares transformers a device-to-host check of the mask (a
        # synchronisation on accelerators) and lets attention take its unmasked kernel.
        padded = bool(lengths.min() < width)
        hidden = self._encoder(
            input_ids=ids_t, attention_mask=attention_t.long() if padded else None
        ).last_hidden_state
        vectors = self._pooling(hidden, pooling_t)
        for dense in self._dense:
            vectors = dense(vectors)
        if normalize:
            vectors = l2_normalize(vectors)
        return vectors.float()

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device == "cpu":
            return tensor
        if self.device.startswith("cuda"):
            # Pinned host memory lets the copy run asynchronously with the previous batch.
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)


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


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import torch

    errors: list[type[BaseException]] = []
    for owner, name in ((torch, "OutOfMemoryError"), (torch.cuda, "OutOfMemoryError")):
        error = getattr(owner, name, None)
        if isinstance(error, type) and error not in errors:
            errors.append(error)
    return tuple(errors)
