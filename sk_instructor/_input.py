"""Turning whatever text container a user passes into a list of strings.

One place for every container (list, tuple, numpy, pandas, polars, generators, the model card's
``[instruction, text, flag]`` rows) so that every component validates input the same way, and
errors name the row that is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TextColumn", "read_text_column"]


@dataclass
class TextColumn:
    """One column of texts extracted from the user's input.

    ``texts[i]`` is ``None`` where the value is missing (None, NaN, pd.NA); ``instructions`` is
    set only for the model card's pair/triple rows, one instruction per row.
    """

    texts: list[str | None]
    instructions: list[str] | None = None
    feature_names: np.ndarray | None = None
    missing_rows: list[int] = field(default_factory=list)


def read_text_column(X: Any, *, parameter: str = "X") -> TextColumn:
    """Extract the texts of ``X`` (one per row), checking types row by row.

    Raises
    ------
    ValueError
        A bare string, a frame or array with several columns, or an array of more than 2-D.
    TypeError
        A value that is neither text nor missing (numbers, bytes...), naming its row.
    """
    if isinstance(X, (str, bytes)):
        raise ValueError(
            f"Iterable over raw text documents expected, {type(X).__name__} object received: "
            f"wrap a single text in a list, e.g. [text]."
        )
    module = type(X).__module__.split(".")[0]
    feature_names = None
    if module in ("pandas", "polars") and hasattr(X, "columns"):
        columns = list(X.columns)
        if len(columns) != 1:
            raise ValueError(
                f"{parameter} is a DataFrame with {len(columns)} columns {columns[:10]}; "
                f"InstructorVectorizer embeds one text column. Select it (df['col']), or use a "
                f"ColumnTransformer with one InstructorVectorizer per text column."
            )
        if all(isinstance(name, str) for name in columns):
            feature_names = np.asarray(columns, dtype=object)
        values = X[columns[0]].to_list()
    elif module in ("pandas", "polars"):  # a Series
        values = X.to_list()
    elif isinstance(X, np.ndarray):
        if X.ndim == 2 and X.shape[1] == 1:
            values = X[:, 0].tolist()
        elif X.ndim == 1:
            values = X.tolist()
        elif X.ndim == 0:
            raise ValueError(f"{parameter} is a 0-d array; pass a 1-D array of texts.")
        else:
            raise ValueError(
                f"{parameter} has shape {X.shape}; expected a 1-D array of texts or a single "
                f"column (n, 1)."
            )
    elif isinstance(X, Iterable):
        values = list(X)
    else:
        raise TypeError(
            f"{parameter} must be a list, array, Series or one-column DataFrame of texts; got "
            f"{type(X).__name__}."
        )
    if values and all(_is_pair_row(value) for value in values):
        return _read_pair_rows(values, parameter)
    texts: list[str | None] = []
    missing_rows = []
    for row, value in enumerate(values):
        if isinstance(value, str):
            texts.append(value)
        elif _is_missing(value):
            texts.append(None)
            missing_rows.append(row)
        else:
            raise TypeError(_not_text_message(parameter, row, value))
    return TextColumn(texts=texts, feature_names=feature_names, missing_rows=missing_rows)


def _is_pair_row(value: Any) -> bool:
    """The model card's ``[instruction, text]`` / ``[instruction, text, flag]`` rows."""
    return (
        isinstance(value, (list, tuple))
        and len(value) in (2, 3)
        and isinstance(value[0], str)
        and (isinstance(value[1], str) or _is_missing(value[1]))
    )


def _read_pair_rows(values: list, parameter: str) -> TextColumn:
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


def _not_text_message(parameter: str, row: int, value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    hint = " (decode bytes first, e.g. value.decode('utf-8'))" if isinstance(value, bytes) else ""
    return (
        f"{parameter} row {row} is {type(value).__name__} {shown}, not text{hint}. Convert the "
        f"column to str first if that is intended (e.g. X.astype(str))."
    )
