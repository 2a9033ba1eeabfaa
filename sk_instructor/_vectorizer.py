"""InstructorVectorizer: INSTRUCTOR embeddings as a scikit-learn transformer.

The class is thin on purpose: it validates parameters, resolves the instruction, reads the input
container and hands (instruction, text) pairs to the shared encoding engine.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
from sklearn.base import (
    BaseEstimator,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _params as params
from ._cache import MemoryCache, resolve_cache
from ._cache.memory import folder_for_workers, join_parent
from ._engine.entry import Encoder, EncodingSettings, resolve_device
from ._input import TextColumn, describe_rows, read_text_column
from ._instruction import resolve_instruction
from ._params import DEFAULTS
from ._progress import text_progress
from ._text_estimator import (
    EmbeddingOutputMixin,
    fall_back_from_a_missing_device,
    text_input_tags,
)

__all__ = ["InstructorVectorizer"]

# The key of a pickled vectorizer's state that says where worker processes share the default
# cache of the process that pickled it (never an attribute of a vectorizer).
_WORKERS_FOLDER = "_sk_instructor_workers_folder"


def _uses_the_default_memory_cache(cache: object) -> bool:
    if isinstance(cache, str):
        return cache == "memory"
    return isinstance(cache, MemoryCache) and cache._is_process_default


@params.fill_parameter_docs
class InstructorVectorizer(EmbeddingOutputMixin, TransformerMixin, BaseEstimator):
    """Embed texts with an INSTRUCTOR model under a task instruction.

    Each text is encoded as ``instruction + text`` by an instruction-following embedding model
    (hkunlp/instructor-base, -large, -xl, or any sentence-transformers checkpoint), and the
    instruction's tokens are left out of the pooled vector, exactly as the published models were
    trained. The instruction is either given whole (``instruction``) or built from a template
    out of ``domain``, ``text_type`` and ``objective``, which makes each part a
    hyper-parameter that GridSearchCV can tune.

    The model is loaded on first use (in ``fit``) and shared by every vectorizer of the process
    with the same ``model``, ``revision``, ``device`` and ``dtype``; the estimator itself holds no
    weights, so clones are cheap and pickles small.

    Parameters
    ----------
    .. shared parameters:: model, instruction, domain, text_type, objective, template
    per_row_instructions : bool, default=False
        Read each row of ``X`` as the model card's ``[instruction, text]`` or
        ``[instruction, text, flag]`` and embed its text under its own instruction (the flag is
        ignored, as in InstructorEmbedding 1.0.1). ``instruction`` must then be None, and
        ``instruction_`` is None. Without it, such rows are refused.
    .. shared parameters:: batch_size, device, dtype, compile, backend, max_seq_length, long_text
    .. shared parameters:: chunk_overlap, normalize, missing, show_progress_bar, cache, revision
    .. shared parameters:: local_files_only

    Attributes
    ----------
    instruction_ : str or None
        The instruction actually applied; None with ``per_row_instructions``.
    embedding_dim_ : int
        Length of each embedding.
    device_ : str
        The device the model runs on.
    n_features_in_ : int
        Always 1: one text column.
    feature_names_in_ : ndarray of shape (1,)
        The text column's name, when fitted on a DataFrame.

    See Also
    --------
    sklearn.feature_extraction.text.TfidfVectorizer : Sparse bag-of-words features.
    sklearn.compose.ColumnTransformer : One vectorizer (and instruction) per text column.

    Notes
    -----
    ``X`` is one column of texts: a list or tuple of str, a 1-D numpy array (or ``(n, 1)``), a
    pandas or polars Series, or a DataFrame with one column. A bare string is rejected, as
    sklearn's text vectorizers do; so are numbers and bytes (convert them first). For several
    text columns use a :class:`~sklearn.compose.ColumnTransformer` with one vectorizer per
    column. Rows ``[instruction, text]`` or ``[instruction, text, 0]`` (the model card's form)
    embed each text under its own instruction when ``per_row_instructions=True``.

    Texts longer than ``max_seq_length`` tokens (512 for INSTRUCTOR, instruction included) are
    truncated by default, as the published models were evaluated. With ``long_text="chunk"``
    such a text is split into windows of its tokens that overlap by ``chunk_overlap`` tokens;
    each window is embedded under the instruction as a text of its own (cached, deduplicated
    and batched like any text) and the text's vector is the mean of the window vectors,
    weighted by their text tokens. Texts that fit are embedded exactly as in truncate mode,
    and use the same cache entries.

    Examples
    --------
    >>> from sk_instructor import InstructorVectorizer
    >>> vectorizer = InstructorVectorizer(
    ...     "hkunlp/instructor-large", domain="Science", text_type="title"
    ... )
    >>> vectors = vectorizer.fit_transform(["Parton energy loss in QCD matter", "Dark matter"])
    >>> vectorizer.instruction_
    'Represent the Science title: '
    >>> vectors.shape, vectors.dtype
    ((2, 768), dtype('float32'))

    In a pipeline, each part of the instruction is a hyper-parameter:

    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> pipeline = make_pipeline(
    ...     InstructorVectorizer("hkunlp/instructor-large", objective="classification"),
    ...     LogisticRegression(),
    ... )
    >>> pipeline.fit(["Dark matter halos", "Interest rates rise"], [0, 1]).predict(["Dark energy"])
    array([...])
    >>> pipeline.set_params(instructorvectorizer__domain="Science")[0].get_params()["domain"]
    'Science'

    A text longer than the window is split into overlapping chunks instead of truncated, and
    its vector is the mean of theirs:

    >>> report = " ".join(["The committee reviewed the budget and the schedule."] * 100)
    >>> chunked = InstructorVectorizer("hkunlp/instructor-large", long_text="chunk")
    >>> chunked.fit_transform([report, "Dark matter"]).shape
    (2, 768)

    Pandas output keeps the index of the input:

    >>> import pandas as pd
    >>> titles = pd.Series(["Dark matter", "Interest rates"], index=["a", "b"])
    >>> vectorizer.set_output(transform="pandas").fit_transform(titles).iloc[:, :2].shape
    (2, 2)
    """

    _parameter_constraints: ClassVar[dict] = {
        **params.constraints(("model", *params.INSTRUCTION, *params.ENGINE)),
        "per_row_instructions": ["boolean"],
    }

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULTS["model"],
        *,
        instruction: str | None = DEFAULTS["instruction"],
        domain: str | None = DEFAULTS["domain"],
        text_type: str | None = DEFAULTS["text_type"],
        objective: str | None = DEFAULTS["objective"],
        template: str = DEFAULTS["template"],
        per_row_instructions: bool = False,
        batch_size: int | None = DEFAULTS["batch_size"],
        device: str = DEFAULTS["device"],
        dtype: str = DEFAULTS["dtype"],
        compile: bool = DEFAULTS["compile"],
        backend: str = DEFAULTS["backend"],
        max_seq_length: int | None = DEFAULTS["max_seq_length"],
        long_text: str = DEFAULTS["long_text"],
        chunk_overlap: int = DEFAULTS["chunk_overlap"],
        normalize: bool = DEFAULTS["normalize"],
        missing: str = DEFAULTS["missing"],
        show_progress_bar: bool | None = DEFAULTS["show_progress_bar"],
        cache: Any = DEFAULTS["cache"],
        revision: str | None = DEFAULTS["revision"],
        local_files_only: bool = DEFAULTS["local_files_only"],
    ) -> None:
        self.model = model
        self.instruction = instruction
        self.domain = domain
        self.text_type = text_type
        self.objective = objective
        self.template = template
        self.per_row_instructions = per_row_instructions
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.compile = compile
        self.backend = backend
        self.max_seq_length = max_seq_length
        self.long_text = long_text
        self.chunk_overlap = chunk_overlap
        self.normalize = normalize
        self.missing = missing
        self.show_progress_bar = show_progress_bar
        self.cache = cache
        self.revision = revision
        self.local_files_only = local_files_only

    # -- scikit-learn API --------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None) -> InstructorVectorizer:
        """Resolve the instruction and load the model; nothing is learned from ``X``.

        Parameters
        ----------
        X : list of str, 1-D array, Series, or one-column DataFrame
            Texts; only checked (and the column name recorded).
        y : None
            Ignored.

        Returns
        -------
        self : InstructorVectorizer
            The fitted vectorizer.
        """
        self._fit(X)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then embed ``X``, reading the input once.

        Unlike :meth:`fit`, it looks every text up in the cache before anything loads, and
        loads the model only if the cache lacks a vector (never, on a warm start).

        Parameters
        ----------
        X : list of str, 1-D array, Series, or one-column DataFrame
            Texts to embed.
        y : None
            Ignored.

        Returns
        -------
        ndarray of shape (n_texts, embedding_dim_), float32
            One row per text.
        """
        column, encoder = self._fit(X, load=False)
        return self._embed(column, encoder)

    def transform(self, X: Any) -> np.ndarray:
        """Embed each text of ``X``.

        Parameters
        ----------
        X : list of str, 1-D array, Series, or one-column DataFrame
            Texts to embed; with ``per_row_instructions``, rows ``[instruction, text]`` or
            ``[instruction, text, 0]``, each text embedded under its own instruction.

        Returns
        -------
        ndarray of shape (n_texts, embedding_dim_), float32
            One row per text; zero rows for missing texts when ``missing="zero"``.
        """
        check_is_fitted(self, "embedding_dim_")
        column = self._read(X)
        validate_data(self, X, reset=False, skip_check_array=True, ensure_2d=False)
        return self._embed(column, self._encoder())

    def __sklearn_tags__(self):
        tags = text_input_tags(super().__sklearn_tags__(), missing=self.missing)
        # Text in, float32 out: float32 is the type of every output.
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        if _uses_the_default_memory_cache(self.cache):
            # For a worker process (GridSearchCV(n_jobs=2)): where it shares this process's
            # default cache (see sk_instructor._cache.memory). Elsewhere it is ignored.
            state = {**state, _WORKERS_FOLDER: folder_for_workers()}
        return state

    def __setstate__(self, state: dict) -> None:
        if _WORKERS_FOLDER in state:
            state = dict(state)
            join_parent(state.pop(_WORKERS_FOLDER))
        super().__setstate__(params.restore_defaults(self, state))
        fall_back_from_a_missing_device(self, "vectorizer")

    # -- internals -----------------------------------------------------------------------------
    def _fit(self, X: Any, *, load: bool = True) -> tuple[TextColumn, Encoder]:
        """Check ``X`` and the parameters, record what fit records; returns the column read
        and the encoder of this call (its model loaded and checked when ``load``)."""
        column = self._read(X)
        if not column.texts:
            raise ValueError(
                "Found array with 0 sample(s) (shape=(0,)) while a minimum of 1 is required: "
                "fit needs at least one text."
            )
        self._check_missing(column)
        # Checks and records the column name the way every sklearn estimator does (warnings on
        # a name mismatch, feature_names_in_ set or removed), without converting the texts.
        validate_data(self, X, reset=True, skip_check_array=True, ensure_2d=False)
        self.n_features_in_ = 1
        # A bad template fails here, at fit, like every other invalid parameter.
        self.instruction_ = self._resolve_instruction()
        self.device_ = resolve_device(self.device, self.backend)
        encoder = self._encoder()
        if load:
            # A max_seq_length the encoder cannot take, or an instruction that leaves it no
            # room for text, fails here, at fit, not at the first transform. (fit_transform
            # loads only if the cache lacks a vector; the engine then checks the same.)
            encoder.check(self.instruction_)
        self.embedding_dim_ = encoder.embedding_dim
        return column, encoder

    def _encoder(self) -> Encoder:
        """The engine's entry for one call, with this vectorizer's settings."""
        settings = EncodingSettings.from_parameters(
            self.get_params(deep=False), device=getattr(self, "device_", self.device)
        )
        return Encoder(settings, resolve_cache(self.cache))

    def _read(self, X: Any) -> TextColumn:
        return read_text_column(X, per_row_instructions=self.per_row_instructions)

    def _check_missing(self, column: TextColumn) -> None:
        if column.missing_rows and self.missing == "error":
            raise ValueError(
                f"X has missing values (None, NaN or pd.NA) at "
                f"{describe_rows(column.missing_rows, column.index)}. Drop or fill them, or set "
                f"missing='empty' (embed an empty text) or missing='zero' (zero vectors)."
            )

    def _resolve_instruction(self) -> str | None:
        if self.per_row_instructions:
            if self.instruction is not None:
                raise ValueError(
                    f"instruction={self.instruction!r} and per_row_instructions=True: every "
                    f"row carries its own instruction, so the configured one would never be "
                    f"used; set one or the other."
                )
            return None
        return resolve_instruction(params.values(self, params.INSTRUCTION), DEFAULTS)

    def _embed(self, column: TextColumn, encoder: Encoder, *, progress: Any = None) -> np.ndarray:
        self._check_missing(column)
        instructions = column.instructions or [self.instruction_] * len(column.texts)
        with text_progress(
            self.show_progress_bar,
            instructions,
            column.texts,
            self.max_seq_length,
            missing=self.missing,
            outside=progress,
        ) as advance:
            return encoder.encode(instructions, column.texts, progress=advance)
