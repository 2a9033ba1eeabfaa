"""Ray Data integration: embed a text column of a ``ray.data.Dataset`` across a cluster.

Install with ``pip install "sk-instructor[ray]"``. Importing this module does not import Ray;
calling :func:`embed_dataset` does, and says which extra to install when Ray is absent.

Each Ray actor takes the parameters of the vectorizer given and loads the model once (per
GPU); every batch then goes through the engine's entry, as an in-process ``transform`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow
    import ray.data

    from ._vectorizer import InstructorVectorizer

__all__ = ["embed_dataset"]

_INSTALL_HINT = 'sk_instructor.ray needs Ray Data: pip install "sk-instructor[ray]"'


def embed_dataset(
    dataset: ray.data.Dataset,
    vectorizer: InstructorVectorizer,
    column: str,
    *,
    output_column: str = "embedding",
    batch_size: int | None = None,
    num_gpus: float | None = None,
    concurrency: int | tuple[int, int] | None = None,
) -> ray.data.Dataset:
    """Add the embedding of each row's ``column`` text to ``dataset``, computed by Ray actors.

    The result is lazy, like every Ray Data transformation: nothing runs until it is consumed
    (``write_parquet``, ``take``, ``iter_batches``...).

    Parameters
    ----------
    dataset : ray.data.Dataset
        Rows with a text column.
    vectorizer : InstructorVectorizer
        A configured vectorizer, fitted or not; only its parameters travel to the actors
        (``model``, instruction, ``device``, ``cache``...). A local ``model`` folder must exist
        at the same path on every node; a hub id is downloaded by each node.
    column : str
        The text column. Missing values follow ``vectorizer.missing``.
    output_column : str, default="embedding"
        Name of the added column: ``fixed_size_list<float32>[embedding_dim]``, Arrow's type
        for fixed-length vectors, which Parquet keeps and polars reads as ``Array``. Ray hands
        its rows to pandas (``to_pandas``) and numpy batches as one list or 1-D array per row:
        ``np.stack(frame["embedding"])`` makes them the ``(n, embedding_dim)`` matrix.
    batch_size : int or None, default=None
        Rows per batch handed to an actor; ``None`` leaves Ray's default. Within a batch the
        engine still sizes its forward passes by ``vectorizer.batch_size`` and a token budget.
    num_gpus : float or None, default=None
        GPUs reserved by each actor, e.g. ``1``; with ``device="auto"`` the actor then runs on
        its GPU. ``None`` reserves none (CPU actors).
    concurrency : int, (int, int) or None, default=None
        Number of actors: a fixed ``n``, an autoscaling ``(min, max)`` range, or ``None`` for
        Ray's default autoscaling pool.

    Returns
    -------
    ray.data.Dataset
        ``dataset``'s columns plus ``output_column``.

    Raises
    ------
    ImportError
        Ray Data is not installed (the message names the ``sk-instructor[ray]`` extra).
    TypeError, ValueError
        Wrong argument types, invalid vectorizer parameters, or a ``column`` the dataset's
        schema does not have, raised here on the driver rather than in every actor.

    Examples
    --------
    >>> import ray  # doctest: +SKIP
    >>> from sk_instructor import InstructorVectorizer
    >>> from sk_instructor.ray import embed_dataset
    >>> papers = ray.data.read_parquet("s3://bucket/papers/")  # doctest: +SKIP
    >>> vectorizer = InstructorVectorizer(
    ...     "hkunlp/instructor-large", domain="Science", text_type="title"
    ... )
    >>> embedded = embed_dataset(
    ...     papers, vectorizer, "title", num_gpus=1, concurrency=4, batch_size=1024
    ... )  # doctest: +SKIP
    >>> embedded.write_parquet("s3://bucket/papers-embedded/")  # doctest: +SKIP
    """
    ray_data = _import_ray_data()
    from ._params import check as check_parameters
    from ._vectorizer import InstructorVectorizer

    if not isinstance(dataset, ray_data.Dataset):
        raise TypeError(f"dataset must be a ray.data.Dataset, got {type(dataset).__name__}")
    if not isinstance(vectorizer, InstructorVectorizer):
        raise TypeError(
            f"vectorizer must be an InstructorVectorizer, got {type(vectorizer).__name__}"
        )
    for name, value in (("column", column), ("output_column", output_column)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    if column == output_column:
        raise ValueError(
            f"output_column={output_column!r} would replace the text column; choose another name"
        )
    params = vectorizer.get_params(deep=False)
    params["show_progress_bar"] = False  # Ray reports progress; a bar per actor would garble it
    check_parameters(params, "InstructorVectorizer")
    if params["per_row_instructions"]:
        raise ValueError(
            "embed_dataset embeds one text column under the vectorizer's instruction; "
            "per_row_instructions=True is not supported here."
        )
    # Checked here, from the schema, rather than seconds later inside an actor.
    schema = dataset.schema()
    names = list(schema.names) if schema is not None else None
    for name, must_exist in ((column, True), (output_column, False)):
        if names is not None and (name in names) != must_exist:
            raise ValueError(
                f"the dataset has no column {name!r}; its columns are {names}"
                if must_exist
                else f"the dataset already has a column {name!r}; pass another output_column"
            )

    options: dict[str, Any] = {"compute": _actor_pool(ray_data, concurrency)}
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        options["batch_size"] = batch_size
    if num_gpus is not None:
        options["num_gpus"] = num_gpus
    return dataset.map_batches(
        _EmbedBatches,
        fn_constructor_kwargs={
            "params": params,
            "column": column,
            "output_column": output_column,
        },
        batch_format="pyarrow",
        **options,
    )


class _EmbedBatches:
    """What each Ray actor runs: the engine's entry, under the vectorizer's settings.

    The model is loaded once per actor, when it starts; each batch is one call of the engine
    (one :class:`Encoder`), so a batch is computed by one set of weights from its first row to
    its last, and a model folder saved over between batches is noticed by the next one.
    """

    def __init__(self, params: dict[str, Any], column: str, output_column: str) -> None:
        from ._cache import resolve_cache
        from ._engine.entry import Encoder, EncodingSettings
        from ._instruction import resolve_instruction
        from ._params import DEFAULTS

        self.instruction = resolve_instruction(params, DEFAULTS)
        self.settings = EncodingSettings.from_parameters(params)
        self.cache = resolve_cache(params["cache"])
        # Loaded (and checked against the instruction) here, once per actor: a bad
        # max_seq_length fails when the actor starts, not in its first batch.
        Encoder(self.settings).check(self.instruction)
        self.column = column
        self.output_column = output_column

    def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        import pyarrow as pa

        from ._engine.entry import Encoder

        if self.column not in batch.column_names:
            raise KeyError(
                f"the dataset has no column {self.column!r}; its columns are {batch.column_names}"
            )
        if self.output_column in batch.column_names:
            raise ValueError(
                f"the dataset already has a column {self.output_column!r}; pass another "
                f"output_column"
            )
        texts = batch.column(self.column).to_pylist()
        encoder = Encoder(self.settings, self.cache)
        vectors = encoder.encode([self.instruction] * len(texts), texts)
        values = pa.array(vectors.reshape(-1), type=pa.float32())
        return batch.append_column(
            self.output_column, pa.FixedSizeListArray.from_arrays(values, encoder.embedding_dim)
        )


def _actor_pool(ray_data: Any, concurrency: int | tuple[int, int] | None) -> Any:
    if concurrency is None:
        return ray_data.ActorPoolStrategy(min_size=1, max_size=None)
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return ray_data.ActorPoolStrategy(size=concurrency)
    if (
        isinstance(concurrency, tuple)
        and len(concurrency) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in concurrency)
        and 1 <= concurrency[0] <= concurrency[1]
    ):
        return ray_data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    raise ValueError(
        f"concurrency must be a positive int, a (min, max) pair of them, or None; "
        f"got {concurrency!r}"
    )


def _import_ray_data() -> Any:
    try:
        import ray.data
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return ray.data
