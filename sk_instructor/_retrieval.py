"""InstructorRetriever: asymmetric INSTRUCTOR retrieval with exact, chunked cosine search.

Queries and documents are embedded under different instructions (retrieval is asymmetric in
INSTRUCTOR: "Represent the Wikipedia question for retrieving supporting documents: " on one
side, "Represent the Wikipedia document for retrieval: " on the other). Embedding goes through
:class:`~sk_instructor.InstructorVectorizer`, so input handling, missing values and the
embedding cache are the vectorizer's; the search is
:func:`~sk_instructor._search.cosine_kneighbors`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from . import _params as params
from ._cache import resolve_cache
from ._engine.entry import ChunkedEmbeddings, Encoder, EncodingSettings
from ._input import read_text_column
from ._instruction import InstructionPair, InstructionTemplate
from ._params import DEFAULTS
from ._progress import text_progress
from ._search import cosine_kneighbors, grouped_cosine_kneighbors
from ._text_estimator import text_input_tags
from ._vectorizer import InstructorVectorizer
from .metrics import mrr_at_k

__all__ = ["InstructorRetriever"]

# The model card's retrieval pair for hkunlp/instructor-*.
_MODEL_CARD_PAIR = InstructionTemplate.retrieval(domain="Wikipedia")
# The engine's parameters, all but normalize: cosine search needs unit vectors.
_ENGINE_PARAMETERS = tuple(name for name in params.ENGINE if name != "normalize")


@params.fill_parameter_docs
class InstructorRetriever(BaseEstimator):
    """Retrieve the documents nearest to each query, each side under its own instruction.

    ``fit`` embeds the corpus under ``document_instruction``; :meth:`kneighbors` embeds the
    queries under ``query_instruction`` and returns the ``n_neighbors`` documents of highest
    cosine similarity, exactly as ``sklearn.neighbors.NearestNeighbors(metric="cosine")`` fitted
    on the document embeddings would: cosine distances in increasing order and the position of
    each document in the corpus. The search is exact and runs block by block (``query_chunk`` x
    ``corpus_chunk`` distances at a time, each block reduced to its best ``n_neighbors`` by a
    partial sort), so a corpus of a million documents never builds an
    ``n_queries x n_documents`` matrix.

    **Long documents.** By default a document longer than ``max_seq_length`` tokens is
    truncated: its end is never searched. With ``long_text="chunk"``, ``fit`` splits it into
    overlapping windows (``chunk_overlap`` tokens shared), embeds each window under the
    document instruction and indexes every window; a document's distance to a query is that of
    its nearest window (the best chunk, max over chunks of the cosine similarity), so a passage
    anywhere in a document can be found. :meth:`kneighbors` still returns document positions,
    each at most once. Queries longer than the window are embedded as the vectorizer embeds
    them in chunk mode (the weighted mean of their windows).

    **Tuning the instructions with GridSearchCV.** Cross-validation splits the *labelled
    queries*: ``GridSearchCV(...).fit(queries, relevant)`` calls ``fit(queries_train,
    relevant_train)`` on each clone and then scores ``kneighbors(queries_test)`` against
    ``relevant_test``. The corpus is not split (every fold searches the whole corpus), so it
    cannot be ``X``: pass it as the ``documents`` parameter. When ``documents`` is set, ``fit``
    embeds it and ignores ``X`` and ``y`` (a frozen embedding model learns nothing from training
    queries). With the default ``cache="memory"``, clones share the process-wide embedding
    cache, so the corpus is encoded once per document instruction, not once per fold and grid
    point, and each query once per query instruction. Candidates run in other processes
    (``n_jobs > 1``) have their own memory; give ``cache`` a folder path to share an on-disk
    cache between them.

    Parameters
    ----------
    .. shared parameters:: model
    query_instruction : str, \
default="Represent the Wikipedia question for retrieving supporting documents: "
        Instruction for the queries (the model card's). ``""``: no instruction, for models
        that were not trained with instructions.
    document_instruction : str, default="Represent the Wikipedia document for retrieval: "
        Instruction for the documents (the model card's). ``""``: no instruction.
    instructions : InstructionPair, (str, str) or None, default=None
        Both instructions in one value, e.g. ``InstructionTemplate.retrieval("Science")``,
        so that a grid search can tune the pair as one hyper-parameter. When given,
        ``query_instruction`` and ``document_instruction`` must keep their defaults.
    n_neighbors : int, default=10
        Neighbours returned by :meth:`kneighbors` when it is not told, and the cut-off of
        :meth:`score`.
    documents : array-like of str or None, default=None
        The corpus, for cross-validation over labelled queries (see above). When None, ``fit``
        takes the corpus as ``X``. A list, 1-D array, Series or one-column DataFrame.
    query_chunk : int, default=512
        Queries per block of the search.
    corpus_chunk : int, default=8192
        Documents per block of the search. A float32 block of the defaults takes 16 MiB.
    .. shared parameters:: batch_size, device, dtype, compile, backend, max_seq_length, long_text
    .. shared parameters:: chunk_overlap, missing, show_progress_bar, cache, revision
    .. shared parameters:: local_files_only

    Attributes
    ----------
    document_embeddings_ : ndarray of shape (n_documents_, embedding_dim_), float32
        Unit-length embeddings of the corpus (zero rows for missing documents when
        ``missing="zero"``). Pickled with the retriever; the model weights are not. With
        ``long_text="chunk"``: each document's vector as
        :class:`~sk_instructor.InstructorVectorizer` gives it in chunk mode (the normalized
        mean of its chunks, weighted by their text tokens); the search uses the chunks.
    chunk_embeddings_ : ndarray of shape (n_chunks, embedding_dim_), float32
        Only with ``long_text="chunk"``: the unit-length vector of every chunk, in corpus
        order and reading order within a document (a document that fits the window is one
        chunk, embedded whole).
    chunk_documents_ : ndarray of shape (n_chunks,), dtype intp
        Only with ``long_text="chunk"``: the position of each chunk's document in the corpus
        (non-decreasing).
    n_documents_ : int
        Number of documents in the corpus.
    n_samples_fit_ : int
        The same number, under the name ``NearestNeighbors`` uses.
    embedding_dim_ : int
        Length of each embedding.
    query_instruction_ : str
        The instruction applied to queries (``""`` for none).
    document_instruction_ : str
        The instruction applied to documents (``""`` for none).

    See Also
    --------
    sklearn.neighbors.NearestNeighbors : The same search on vectors you already have.
    sk_instructor.metrics.make_retrieval_scorer : Scorers at another metric or cut-off.
    sk_instructor.InstructionTemplate.retrieval : Query and document instructions per domain.

    Examples
    --------
    Fit on a corpus, then query it:

    >>> from sk_instructor import InstructorRetriever
    >>> documents = [
    ...     "The Federal Reserve raised its benchmark interest rate.",
    ...     "Scientists discovered a new species of frog in the rain forest.",
    ...     "The stock market fell after the announcement of new tariffs.",
    ... ]
    >>> retriever = InstructorRetriever("hkunlp/instructor-large", n_neighbors=2).fit(documents)
    >>> distances, indices = retriever.kneighbors(["Why did stocks fall?", "New frog species"])
    >>> distances.shape, indices.shape, distances.dtype
    ((2, 2), (2, 2), dtype('float32'))

    Tune the instructions on labelled queries with the standard ``cv=`` API: the corpus is a
    parameter, ``X`` the queries and ``y`` the position of each query's relevant document.

    >>> from sklearn.model_selection import GridSearchCV
    >>> from sk_instructor.metrics import make_retrieval_scorer
    >>> queries = ["interest rates", "frog species", "stock market", "new tariffs"]
    >>> relevant = [0, 1, 2, 2]
    >>> search = GridSearchCV(
    ...     InstructorRetriever("hkunlp/instructor-large", documents=documents),
    ...     param_grid={
    ...         "query_instruction": ["Represent the News question for retrieving articles: ", ""],
    ...         "document_instruction": ["Represent the News article for retrieval: ", ""],
    ...     },
    ...     scoring=make_retrieval_scorer("mrr", k=3),
    ...     cv=2,
    ... ).fit(queries, relevant)
    >>> sorted(search.best_params_)
    ['document_instruction', 'query_instruction']
    >>> search.best_estimator_.n_documents_
    3
    """

    _parameter_constraints: ClassVar[dict] = {
        **params.constraints(_ENGINE_PARAMETERS),
        "query_instruction": [str],
        "document_instruction": [str],
        "instructions": [tuple, None],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "documents": ["array-like", None],
        "query_chunk": [Interval(Integral, 1, None, closed="left")],
        "corpus_chunk": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULTS["model"],
        *,
        query_instruction: str = _MODEL_CARD_PAIR.query,
        document_instruction: str = _MODEL_CARD_PAIR.document,
        instructions: InstructionPair | tuple[str, str] | None = None,
        n_neighbors: int = 10,
        documents: Any = None,
        query_chunk: int = 512,
        corpus_chunk: int = 8192,
        batch_size: int | None = DEFAULTS["batch_size"],
        device: str = DEFAULTS["device"],
        dtype: str = DEFAULTS["dtype"],
        compile: bool = DEFAULTS["compile"],
        backend: str = DEFAULTS["backend"],
        max_seq_length: int | None = DEFAULTS["max_seq_length"],
        long_text: str = DEFAULTS["long_text"],
        chunk_overlap: int = DEFAULTS["chunk_overlap"],
        missing: str = DEFAULTS["missing"],
        show_progress_bar: bool | None = DEFAULTS["show_progress_bar"],
        cache: Any = DEFAULTS["cache"],
        revision: str | None = DEFAULTS["revision"],
        local_files_only: bool = DEFAULTS["local_files_only"],
    ) -> None:
        self.model = model
        self.query_instruction = query_instruction
        self.document_instruction = document_instruction
        self.instructions = instructions
        self.n_neighbors = n_neighbors
        self.documents = documents
        self.query_chunk = query_chunk
        self.corpus_chunk = corpus_chunk
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.compile = compile
        self.backend = backend
        self.max_seq_length = max_seq_length
        self.long_text = long_text
        self.chunk_overlap = chunk_overlap
        self.missing = missing
        self.show_progress_bar = show_progress_bar
        self.cache = cache
        self.revision = revision
        self.local_files_only = local_files_only

    # -- scikit-learn API --------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any = None, y: Any = None) -> InstructorRetriever:
        """Embed the corpus under the document instruction.

        Parameters
        ----------
        X : list of str, 1-D array, Series, one-column DataFrame, or None
            The corpus when the ``documents`` parameter is None. When ``documents`` is set,
            ignored: in cross-validation it is the training fold of the labelled queries.
        y : None or array-like
            Ignored (the relevant documents of the training queries in cross-validation).

        Returns
        -------
        self : InstructorRetriever
            The fitted retriever.
        """
        if self.documents is not None:
            corpus = self.documents
        elif X is None:
            raise ValueError(
                "InstructorRetriever needs a corpus: call fit(documents), or set the documents "
                "parameter (the form cross-validation over labelled queries needs)."
            )
        else:
            corpus = X
        self.query_instruction_, self.document_instruction_ = self._resolve_instructions()
        vectorizer = self._vectorizer(self.document_instruction_)
        # A refit in the other mode must not search the chunks of the previous fit.
        for name in ("chunk_embeddings_", "chunk_documents_"):
            self.__dict__.pop(name, None)
        if self.long_text == "chunk":
            chunks = self._embed_chunks(vectorizer, corpus)
            self.chunk_embeddings_ = chunks.vectors
            self.chunk_documents_ = chunks.owners
            self.document_embeddings_ = chunks.pool(normalize=True)
        else:
            self.document_embeddings_ = vectorizer.fit_transform(corpus)
        self.n_documents_ = self.n_samples_fit_ = self.document_embeddings_.shape[0]
        self.embedding_dim_ = self.document_embeddings_.shape[1]
        return self

    def embed_queries(self, X: Any) -> np.ndarray:
        """Embed queries under the query instruction.

        Parameters
        ----------
        X : list of str, 1-D array, Series, or one-column DataFrame
            The queries.

        Returns
        -------
        ndarray of shape (n_queries, embedding_dim_), float32
            Unit-length rows (zero rows for missing queries when ``missing="zero"``).
        """
        check_is_fitted(self, "document_embeddings_")
        if hasattr(X, "__len__") and not isinstance(X, (str, bytes)) and len(X) == 0:
            # As sklearn's NearestNeighbors does, but saying which call got nothing.
            raise ValueError("no queries: embed_queries / kneighbors need at least one text.")
        # A fresh vectorizer per call: queries need not share the corpus's column name, and
        # the loaded model and the cache are shared through the registry anyway.
        return self._vectorizer(self.query_instruction_).fit_transform(X)

    def kneighbors(
        self, X: Any, n_neighbors: int | None = None, return_distance: bool = True
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """Find the nearest documents of each query by cosine similarity.

        Parameters
        ----------
        X : list of str, 1-D array, Series, or one-column DataFrame
            The queries.
        n_neighbors : int or None, default=None
            Documents per query, ``1 <= n_neighbors <= n_documents_``; ``None`` uses the
            ``n_neighbors`` parameter.
        return_distance : bool, default=True
            Whether to return the distances along with the indices.

        Returns
        -------
        distances : ndarray of shape (n_queries, n_neighbors), float32
            Cosine distances (``1 - cosine similarity``), increasing along each row. Only
            returned if ``return_distance``.
        indices : ndarray of shape (n_queries, n_neighbors), dtype intp
            Positions of the documents in the corpus. Exactly equal distances go to the lower
            position.

        Raises
        ------
        ValueError
            If ``n_neighbors`` is out of range (before any query is embedded).
        """
        check_is_fitted(self, "document_embeddings_")
        if n_neighbors is None:
            n_neighbors = self.n_neighbors
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, Integral):
            raise TypeError(
                f"n_neighbors does not take {type(n_neighbors)} value, enter integer value"
            )
        if not 1 <= n_neighbors <= self.n_samples_fit_:
            # sklearn's NearestNeighbors wording, checked before paying for the queries.
            raise ValueError(
                f"Expected 1 <= n_neighbors <= n_samples_fit, but n_neighbors = {n_neighbors}, "
                f"n_samples_fit = {self.n_samples_fit_}"
            )
        search = dict(
            query_chunk=self.query_chunk,
            corpus_chunk=self.corpus_chunk,
            # Rows are unit vectors from the engine (or zero rows); normalizing each corpus
            # block again would cost as much as the search itself for a handful of queries.
            corpus_is_normalized=True,
            return_distance=return_distance,
        )
        queries = self.embed_queries(X)
        if hasattr(self, "chunk_embeddings_"):
            # Fitted with long_text="chunk": a document is as near as its nearest chunk.
            return grouped_cosine_kneighbors(
                queries, self.chunk_embeddings_, self.chunk_documents_, int(n_neighbors), **search
            )
        return cosine_kneighbors(queries, self.document_embeddings_, int(n_neighbors), **search)

    def score(self, X: Any, y: Any) -> float:
        """Mean reciprocal rank of each query's relevant document within ``n_neighbors``.

        The default score of ``GridSearchCV`` / ``cross_val_score`` when no ``scoring`` is
        given. The cut-off is ``min(n_neighbors, n_documents_)``; use
        :func:`~sk_instructor.metrics.make_retrieval_scorer` for recall or nDCG.

        Parameters
        ----------
        X : list of str, 1-D array, Series, or one-column DataFrame
            The queries.
        y : sequence of length n_queries
            Per query, the position of its relevant document in the corpus, or a collection
            of positions.

        Returns
        -------
        score : float
            MRR@k in [0, 1]; a query whose relevant documents are all beyond rank k counts 0.
        """
        check_is_fitted(self, "document_embeddings_")
        k = min(self.n_neighbors, self.n_samples_fit_)
        return mrr_at_k(y, self.kneighbors(X, n_neighbors=k, return_distance=False), k=k)

    def __sklearn_tags__(self):
        # What fit and kneighbors accept, as the vectorizer's.
        tags = text_input_tags(super().__sklearn_tags__(), missing=self.missing)
        tags.target_tags.required = False
        tags.non_deterministic = False
        return tags

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(params.restore_defaults(self, state))

    def _resolve_instructions(self) -> InstructionPair:
        if self.instructions is None:
            return InstructionPair(self.query_instruction, self.document_instruction)
        pair = self.instructions
        if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
            raise ValueError(
                f"instructions must be a (query instruction, document instruction) pair of "
                f"str, e.g. InstructionTemplate.retrieval('Wikipedia'); got {pair!r}."
            )
        if (self.query_instruction, self.document_instruction) != _MODEL_CARD_PAIR:
            raise ValueError(
                "instructions and query_instruction / document_instruction are both set: give "
                "the pair in one or the other."
            )
        return InstructionPair(*pair)

    # -- internals -----------------------------------------------------------------------------
    @staticmethod
    def _embed_chunks(vectorizer: InstructorVectorizer, corpus: Any) -> ChunkedEmbeddings:
        """Each document's chunk vectors, in corpus order (one, the text's own, when it fits
        the window), under the document instruction: the index of ``long_text="chunk"``."""
        # Read twice (checked by the vectorizer's fit, then embedded): a generator is listed.
        corpus = list(corpus) if isinstance(corpus, Iterator) else corpus
        vectorizer.fit(corpus)  # checks the input and the parameters, loads the model
        texts = read_text_column(corpus).texts
        settings = EncodingSettings.from_parameters(
            vectorizer.get_params(deep=False), device=vectorizer.device_
        )
        encoder = Encoder(settings, resolve_cache(vectorizer.cache))
        instructions = [vectorizer.instruction_] * len(texts)
        with text_progress(
            vectorizer.show_progress_bar,
            instructions,
            texts,
            vectorizer.max_seq_length,
            missing=vectorizer.missing,
        ) as progress:
            return encoder.encode_chunks(instructions, texts, progress=progress)

    def _vectorizer(self, instruction: str) -> InstructorVectorizer:
        # Cosine search on unit vectors: the dot product is the cosine.
        return InstructorVectorizer(
            **params.values(self, _ENGINE_PARAMETERS), instruction=instruction, normalize=True
        )
