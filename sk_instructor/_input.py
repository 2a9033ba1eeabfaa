"""Turning whatever text container a user passes into a list of strings.

One place for every container (list, tuple, numpy, pandas, polars, pyarrow, generators, the
model card's ``[instruction, text, flag]`` rows) so that every component validates input the
same way, and errors name the row that is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TextColumn", "describe_rows", "read_text_column"]

# How many offending rows an error message lists before summarising the rest.
_ROWS_SHOWN = 10


@dataclass
class TextColumn:
    """One column of texts extracted from the user's input.

    ``texts[i]`` is ``None`` where the value is missing (None, NaN, pd.NA); ``instructions`` is
    set only for the model card's pair/triple rows, one instruction per row. ``index`` is the
    pandas index of the input, kept so that errors can name rows by label as well.
    """

    texts: list[str | None]
    instructions: list[str] | None = None
    feature_names: np.ndarray | None = None
    missing_rows: list[int] = field(default_factory=list)
    index: Any = None


def read_text_column(
    X: Any, *, parameter: str = "X", per_row_instructions: bool = False
) -> TextColumn:
    """Extract the texts of ``X`` (one per row), checking types row by row.

    Accepted: a list or tuple of str, a 1-D numpy array (or a single column ``(n, 1)``, also
    as a list or tuple of one-element lists or tuples, ``[["a"], ["b"]]``), a pandas or polars
    Series, a pandas or polars DataFrame with one column, a pyarrow array, or any other
    iterable of str. With ``per_row_instructions``, rows are the model card's
    ``[instruction, text]`` / ``[instruction, text, flag]`` instead, as a list of lists or
    tuples or as an ``(n, 2)`` / ``(n, 3)`` array; otherwise such rows are refused, so that a
    list of sentence pairs is never read as instructions by mistake.

    Raises
    ------
    ValueError
        A bare string, a frame or array with no or several columns, or an array of more than
        2-D.
    TypeError
        A value that is neither text nor missing (numbers, bytes, a row of several values
        without ``per_row_instructions``, a text among one-element rows), naming its row; a
        sparse matrix; an unordered container (set, dict).

    Examples
    --------
    >>> from sk_instructor._input import read_text_column
    >>> read_text_column([["Dark matter"], ["Parton energy loss"]]).texts
    ['Dark matter', 'Parton energy loss']
    """
    if isinstance(X, (str, bytes)):
        # The wording of sklearn's own text vectorizers, which reject a bare string the same way.
        raise ValueError(
            f"Iterable over raw text documents expected, {type(X).__name__} object received: "
            f"wrap a single text in a list, e.g. [text]."
        )
    module = type(X).__module__.split(".")[0]
    feature_names = None
    index = None
    if module == "scipy" and hasattr(X, "tocsr"):
        raise TypeError(
            f"{parameter} is a scipy sparse {type(X).__name__}: sparse input is not supported; "
            f"InstructorVectorizer embeds texts (a list, 1-D array, Series or one-column frame)."
        )
    if module in ("pandas", "polars") and hasattr(X, "columns"):
        columns = list(X.columns)
        if len(columns) != 1:
            raise ValueError(_column_count_message(parameter, len(columns), X.shape, columns))
        if all(isinstance(name, str) for name in columns):
            feature_names = np.asarray(columns, dtype=object)
        values = X[columns[0]].to_list()
        if module == "pandas":
            index = X.index
    elif module in ("pandas", "polars") and hasattr(X, "to_list"):  # a Series
        values = X.to_list()
        if module == "pandas":
            index = X.index
    elif hasattr(X, "to_pylist"):  # pyarrow Array / ChunkedArray: keeps nulls as None
        values = X.to_pylist()
    elif per_row_instructions and isinstance(X, np.ndarray) and X.ndim == 2:
        values = X.tolist()  # rows of [instruction, text(, flag)]
    elif isinstance(X, np.ndarray) or hasattr(X, "__array__"):
        values = _array_values(np.asarray(X), parameter)
    elif isinstance(X, (Set, Mapping)):
        raise TypeError(
            f"{parameter} is a {type(X).__name__}, which has no row order; pass a list of texts."
        )
    elif isinstance(X, Iterable):
        values = list(X)
        # Python rows [text] are one column, as an (n, 1) array is; a Series or pyarrow array
        # whose values are lists is not read this way.
        if values and _is_one_element_row(values[0]) and not per_row_instructions:
            values = _one_element_values(values, parameter, index)
    else:
        raise TypeError(
            f"{parameter} must be a list, array, Series or one-column DataFrame of texts; got "
            f"{type(X).__name__}."
        )
    if per_row_instructions:
        return _read_pair_rows(values, parameter, index)
    texts: list[str | None] = []
    missing_rows = []
    for row, value in enumerate(values):
        if isinstance(value, str):
            texts.append(value)
        elif _is_missing(value):
            texts.append(None)
            missing_rows.append(row)
        else:
            raise TypeError(_not_text_message(parameter, row, value, index))
    return TextColumn(
        texts=texts, feature_names=feature_names, missing_rows=missing_rows, index=index
    )


def _is_one_element_row(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 1


def _one_element_values(values: list, parameter: str, index: Any = None) -> list:
    """The values of rows ``[text]``: one column, as an ``(n, 1)`` array is; every row must be
    one (a row of another length, or a bare value, is refused naming its row)."""
    for row, value in enumerate(values):
        if not _is_one_element_row(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise TypeError(
                f"{parameter} {_describe_row(row, index)} is {type(value).__name__} {shown}, "
                f"where row 0 is a one-element row {values[0]!r:.60}: one column of texts is "
                f"either every row a text or every row a one-element list [text]."
            )
    return [value[0] for value in values]


def _array_values(X: np.ndarray, parameter: str) -> list:
    if X.ndim == 1:
        return X.tolist()
    if X.ndim == 2 and X.shape[1] == 1:
        return X[:, 0].tolist()
    if X.ndim == 2:
        raise ValueError(_column_count_message(parameter, X.shape[1], X.shape))
    if X.ndim == 0:
        raise ValueError(
            f"{parameter} is a 0-d array holding {X.item()!r}; pass a 1-D array of texts."
        )
    raise ValueError(
        f"{parameter} has shape {X.shape}; expected a 1-D array of texts or a single column (n, 1)."
    )


def describe_rows(rows: list[int], index: Any = None) -> str:
    """``"row position(s) [1, 4]"``, plus the pandas labels when they differ from positions."""
    shown = rows[:_ROWS_SHOWN]
    more = "" if len(rows) <= _ROWS_SHOWN else f" and {len(rows) - _ROWS_SHOWN} more"
    text = f"row position(s) {shown}{more}"
    if index is not None and not _is_default_index(index):
        text += f" (index label(s) {[index[row] for row in shown]})"
    return text


def _describe_row(row: int, index: Any = None) -> str:
    text = f"row {row}"
    if index is not None and not _is_default_index(index):
        text += f" (index label {index[row]!r})"
    return text


def _is_default_index(index: Any) -> bool:
    return type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1


def _column_count_message(
    parameter: str, n_columns: int, shape: tuple, columns: list | None = None
) -> str:
    if n_columns == 0:
        # sklearn's wording (check_array), which its estimator checks look for.
        return (
            f"Found array with 0 feature(s) (shape={tuple(shape)}) while a minimum of 1 is "
            f"required: {parameter} must hold one column of texts."
        )
    named = f" {columns[:10]}" if columns is not None else ""
    return (
        f"{parameter} has {n_columns} columns{named} (shape={tuple(shape)}); "
        f"InstructorVectorizer embeds one text column. Select it (e.g. df['col']), or use a "
        f"ColumnTransformer with one InstructorVectorizer per text column."
    )


def _is_pair_row(value: Any) -> bool:
    """The model card's ``[instruction, text]`` / ``[instruction, text, flag]`` rows."""
    return (
        isinstance(value, (list, tuple))
        and len(value) in (2, 3)
        and isinstance(value[0], str)
        and (isinstance(value[1], str) or _is_missing(value[1]))
    )


def _read_pair_rows(values: list, parameter: str, index: Any = None) -> TextColumn:
    for row, value in enumerate(values):
        if not _is_pair_row(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise TypeError(
                f"{parameter} {_describe_row(row, index)} is {type(value).__name__} {shown}, "
                f"not an [instruction, text] row; with per_row_instructions=True every row is "
                f"[instruction, text] or [instruction, text, flag]."
            )
    # The third element was a query/document flag in the research code; the released
    # InstructorEmbedding 1.0.1 ignored it, and so do we.
    instructions = [value[0] for value in values]
    texts = [value[1] if isinstance(value[1], str) else None for value in values]
    missing_rows = [row for row, text in enumerate(texts) if text is None]
    return TextColumn(texts=texts, instructions=instructions, missing_rows=missing_rows)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, np.floating):
        return bool(np.isnan(value))
    # pandas.NA and NaT, without importing pandas for users who never use it.
    return type(value).__name__ in ("NAType", "NaTType")


def _not_text_message(parameter: str, row: int, value: Any, index: Any = None) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if isinstance(value, bytes):
        hint = "Decode bytes first, e.g. value.decode('utf-8')."
    elif isinstance(value, (list, tuple)) and len(value) == 1:
        # A one-element row among texts (one-element rows are a column only when all are).
        hint = "One column of texts is either every row a text or every row a one-element list."
    elif isinstance(value, (list, tuple)):
        hint = (
            "Rows [instruction, text] or [instruction, text, 0] carry their own instruction "
            "only with per_row_instructions=True."
        )
    else:
        hint = "Convert the column to str first if that is intended (e.g. X.astype(str))."
    where = _describe_row(row, index)
    return f"{parameter} {where} is {type(value).__name__} {shown}, not text. {hint}"
