"""Rows of the input as the run takes them: pieces of the sizes asked, and their texts' lengths."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["RowReader", "text_lengths"]


def text_lengths(text: pa.Array | pa.ChunkedArray, cap: int | None = None) -> np.ndarray:
    """Characters of each text (0 where missing), at most ``cap`` each, as int64.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from sk_instructor._cli.row_reader import text_lengths
    >>> text_lengths(pa.array(["déjà", None, "a long text"]), cap=5).tolist()
    [4, 0, 5]
    """
    if pa.types.is_null(text.type):
        return np.zeros(len(text), dtype=np.int64)
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        text = text.cast(pa.large_string())  # dictionary or string_view
    lengths = pc.utf8_length(text).fill_null(0).to_numpy(zero_copy_only=False)
    lengths = lengths.astype(np.int64, copy=False)
    return lengths if cap is None else np.minimum(lengths, cap)


class RowReader:
    """Cut a stream of record batches into tables of the sizes asked, in order.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from sk_instructor._cli.row_reader import RowReader
    >>> batch = pa.record_batch({"text": ["a", "b", "c"]})
    >>> reader = RowReader([batch, batch])
    >>> [reader.take(4).num_rows, reader.take(4).num_rows, reader.take(4)]
    [4, 2, None]
    """

    def __init__(self, batches) -> None:
        self._batches = iter(batches)
        self._pending: list[pa.RecordBatch] = []
        self._n_pending = 0

    def take(self, n_rows: int) -> pa.Table | None:
        """The next ``n_rows`` rows (fewer at the end of the file), or None after the last."""
        while self._n_pending < n_rows:
            batch = next(self._batches, None)
            if batch is None:
                break
            if batch.num_rows:
                self._pending.append(batch)
                self._n_pending += batch.num_rows
        if not self._n_pending:
            return None
        table = pa.Table.from_batches(self._pending)
        rest = table.slice(n_rows)
        self._pending, self._n_pending = rest.to_batches(), rest.num_rows
        return table.slice(0, n_rows)
