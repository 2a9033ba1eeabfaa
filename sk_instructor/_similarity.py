"""Cosine similarity of aligned text pairs, each side under its own instruction (STS-style)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._input import read_text_column
from ._instruction import InstructionTemplate
from ._vectorizer import InstructorVectorizer

__all__ = ["pair_similarity"]

_STS_INSTRUCTION = InstructionTemplate.sts()


def pair_similarity(
    texts_a: Any,
    texts_b: Any,
    *,
    model: str | os.PathLike[str] = "hkunlp/instructor-large",
    instruction_a: str | None = _STS_INSTRUCTION,
    instruction_b: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_seq_length: int | None = None,
    missing: str = "error",
    show_progress_bar: bool | None = None,
    cache: Any = "memory",
    revision: str | None = None,
    local_files_only: bool = False,
) -> np.ndarray:
    """Cosine similarity of ``texts_a[i]`` and ``texts_b[i]`` for every row ``i``.

    Both sides are embedded by the shared engine (through
    :class:`~sk_instructor.InstructorVectorizer`), ``texts_a`` under ``instruction_a`` and
    ``texts_b`` under ``instruction_b``, so symmetric tasks (semantic textual similarity) and
    asymmetric ones (question / answer pairs) take one call. With a cache (the default), a text
    that appears several times, on either side under the same instruction, is encoded once: the
    1,225 rated pairs of the Lee corpus cost 50 encodings.

    Parameters
    ----------
    texts_a : list of str, 1-D array, Series, or one-column DataFrame
        First text of each pair.
    texts_b : list of str, 1-D array, Series, or one-column DataFrame
        Second text of each pair, aligned with ``texts_a`` (same length).
    model : str or path-like, default="hkunlp/instructor-large"
        A Hugging Face hub id or a local folder in the sentence-transformers layout.
    instruction_a : str or None, default="Represent the sentence: "
        Instruction for ``texts_a`` (the STS preset,
        :meth:`~sk_instructor.InstructionTemplate.sts`). ``None`` or ``""``: no instruction.
    instruction_b : str or None, default=None
        Instruction for ``texts_b``; ``None`` uses ``instruction_a`` (symmetric tasks). Pass
        ``""`` for no instruction on this side only.
    batch_size, device, dtype, max_seq_length, show_progress_bar, cache, revision, \
local_files_only
        Engine settings, as in :class:`~sk_instructor.InstructorVectorizer`.
    missing : {"error", "empty", "zero"}, default="error"
        Missing texts (None, NaN, pd.NA): raise naming the rows, embed the empty string, or
        use a zero vector, whose similarity with anything is 0.

    Returns
    -------
    similarity : ndarray of shape (n_pairs,), float64
        Cosine similarities in [-1, 1].

    Raises
    ------
    ValueError
        If the two sides differ in length (the message names both lengths), and for invalid
        input or settings as :class:`~sk_instructor.InstructorVectorizer` does.

    See Also
    --------
    sklearn.metrics.pairwise.paired_cosine_distances : ``1 -`` this, on vectors.

    Examples
    --------
    >>> import tempfile
    >>> from sk_instructor._similarity import pair_similarity
    >>> from sk_instructor._testing import build_t5_checkpoint
    >>> model_folder = build_t5_checkpoint(tempfile.mkdtemp())  # a tiny random model
    >>> similarity = pair_similarity(
    ...     ["A man is playing a guitar.", "The stock market fell sharply."],
    ...     ["A man plays the guitar.", "A quick brown fox jumps over the lazy dog."],
    ...     model=model_folder,
    ...     instruction_a="Represent the sentence: ",
    ... )
    >>> similarity.shape, similarity.dtype
    ((2,), dtype('float64'))
    """
    texts_a = _materialize(texts_a)
    texts_b = _materialize(texts_b)
    n_a = len(read_text_column(texts_a, parameter="texts_a").texts)
    n_b = len(read_text_column(texts_b, parameter="texts_b").texts)
    if n_a != n_b:
        raise ValueError(
            f"texts_a has {n_a} texts but texts_b has {n_b}; pair_similarity compares aligned "
            f"pairs, so both sides need the same length."
        )
    for name, value in (("instruction_a", instruction_a), ("instruction_b", instruction_b)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, got {type(value).__name__}.")
    instruction_a = instruction_a or ""
    instruction_b = instruction_a if instruction_b is None else instruction_b

    def embed(texts: Any, instruction: str, side: str) -> np.ndarray:
        vectorizer = InstructorVectorizer(
            model=model,
            instruction=instruction,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            max_seq_length=max_seq_length,
            normalize=True,
            missing=missing,
            show_progress_bar=show_progress_bar,
            cache=cache,
            revision=revision,
            local_files_only=local_files_only,
        )
        try:
            return vectorizer.fit_transform(texts).astype(np.float64)
        except ValueError as exc:
            # The vectorizer calls every input X; say which side of the pairs it was.
            raise ValueError(f"{side}: {exc}") from exc

    vectors_a = embed(texts_a, instruction_a, "texts_a")
    vectors_b = embed(texts_b, instruction_b, "texts_b")
    # Re-normalized in float64 so the result is a cosine to double precision; zero rows (missing
    # texts with missing="zero") stay zero and score 0.
    norms = np.linalg.norm(vectors_a, axis=1) * np.linalg.norm(vectors_b, axis=1)
    dots = np.einsum("ij,ij->i", vectors_a, vectors_b)
    similarity = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.clip(similarity, -1.0, 1.0)


def _materialize(texts: Any) -> Any:
    """A one-shot iterator (e.g. a generator) is read twice here: turn it into a list first."""
    return list(texts) if isinstance(texts, Iterator) else texts
