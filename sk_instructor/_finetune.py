"""InstructorFineTuner: the encoder fine-tuned on the user's labels, as a scikit-learn step.

INSTRUCTOR was trained contrastively under instructions; SetFit showed that a short contrastive
fine-tuning on a few labelled examples per class beats frozen embeddings. ``fit(X, y)`` does
that to a copy of the encoder (the engine's :mod:`fine_tuning` and :mod:`training` modules),
saves it as a checkpoint in the sentence-transformers layout, and ``transform`` embeds with
it exactly as :class:`~sk_instructor.InstructorVectorizer` embeds with any checkpoint.
"""

from __future__ import annotations

import os
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import (
    BaseEstimator,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import _params as params
from ._cache import resolve_cache
from ._engine.entry import (
    Encoder,
    EncodingSettings,
    TrainingSettings,
    fine_tune,
    resolve_device,
)
from ._exceptions import ModelNotFoundError
from ._input import TextColumn, describe_rows, read_text_column
from ._instruction import resolve_instruction
from ._params import DEFAULTS
from ._progress import text_progress
from ._text_estimator import (
    EmbeddingOutputMixin,
    fall_back_from_a_missing_device,
    text_input_tags,
)

__all__ = ["InstructorFineTuner"]

LOSSES = ("cosine", "contrastive")


@params.fill_parameter_docs
class InstructorFineTuner(EmbeddingOutputMixin, TransformerMixin, BaseEstimator):
    """Fine-tune an INSTRUCTOR encoder on labelled texts, then embed with it.

    ``fit(X, y)`` fine-tunes a copy of the encoder and its Dense stage under the instruction,
    SetFit-style: each text is paired with texts of its own class and of other classes, and a
    contrastive loss on the cosine similarity draws the first together and pushes the second
    apart. Each text is read as ``instruction + text`` and its instruction's tokens are left
    out of pooling, in training exactly as in inference. A few epochs over 8 to 64 examples per
    class are enough; a classifier on the tuned vectors (a
    :class:`~sklearn.linear_model.LogisticRegression` in a pipeline) then usually beats one on
    frozen vectors.

    The tuned checkpoint is saved in the sentence-transformers layout of the input (config,
    weights, tokenizer, ``modules.json``, ``1_Pooling``, ``2_Dense``, ...) to ``output_dir``,
    or by default to a folder named by a hash of the fit's content. It is
    ``model_path_``: ``InstructorVectorizer(model=tuner.model_path_)`` and
    ``sentence_transformers.SentenceTransformer(tuner.model_path_)`` load it. ``transform``
    embeds with it through the same engine and cache as the vectorizer; the cache keys name the
    tuned weights, so no vector of the base model is ever served for them.

    Parameters
    ----------
    .. shared parameters:: model, instruction, domain, text_type, objective, template
    pairs_per_text : int, default=20
        Training pairs drawn per text and epoch, alternately with a text of its own class and
        with one of another class (SetFit draws 40 by default: 20 "iterations" of one of each).
    epochs : int, default=1
        Passes over the pairs; each epoch draws its pairs anew.
    learning_rate : float, default=2e-5
        Peak AdamW learning rate, after a linear warm-up over the first tenth of the steps,
        then decreasing linearly to zero.
    train_batch_size : int, default=16
        Pairs per optimisation step (up to twice as many texts go through the encoder at once).
        ``batch_size`` is the embedding's, at ``transform``.
    loss : {"cosine", "contrastive"}, default="cosine"
        ``"cosine"``: squared error between a pair's cosine similarity and 1 (same class) or 0
        (different classes), SetFit's default. ``"contrastive"``: the contrastive loss on the
        cosine distance with a margin of 0.5, sentence-transformers' ContrastiveLoss.
    random_state : int, RandomState instance or None, default=None
        Seeds the pairs, their order and the dropout. With an int, fitting twice on the same
        data on a CPU gives identical weights (and reuses the first fit's checkpoint). On a
        GPU, kernels are not bit-reproducible.
    output_dir : str, path-like or None, default=None
        Where the tuned checkpoint is saved. An existing folder must be empty or hold an
        earlier fine-tuning, which is replaced: give each estimator of a parallel search its own
        folder, or leave it None. ``None``: a folder named by a hash of the fit's content (base
        weights, instruction, training parameters and seed, texts and labels) under
        ``$SK_INSTRUCTOR_FINE_TUNED_DIR``, else ``~/.cache/sk_instructor/fine_tuned``; a fit of
        the same content finds it there and trains nothing.
    .. shared parameters:: batch_size, device, dtype, compile, backend, max_seq_length, long_text
    .. shared parameters:: chunk_overlap, normalize, missing, show_progress_bar, cache, revision
    .. shared parameters:: local_files_only

    Attributes
    ----------
    model_path_ : str
        The tuned checkpoint's folder.
    instruction_ : str
        The instruction trained and embedded under.
    embedding_dim_ : int
        Length of each embedding.
    device_ : str
        The device the model trained and runs on.
    training_loss_ : list of float
        The mean training loss of each epoch (as recorded in the checkpoint, when an identical
        fit's was reused).
    n_training_pairs_ : int
        Pairs trained on, all epochs together.
    n_training_steps_ : int
        Optimisation steps.
    n_features_in_ : int
        Always 1: one text column.
    feature_names_in_ : ndarray of shape (1,)
        The text column's name, when fitted on a DataFrame.

    See Also
    --------
    InstructorVectorizer : Frozen embeddings under an instruction, nothing trained.

    Notes
    -----
    Training computes in float32 on a CPU; on a CUDA GPU, under bfloat16 autocast (weights and
    optimizer state in float32) unless ``dtype="float32"``. ``dtype`` otherwise sets the
    embedding's precision, as for the vectorizer. A text longer than ``max_seq_length`` tokens
    is truncated for training; ``long_text`` applies at ``transform``. Missing texts are
    refused by default; with ``missing="empty"`` they train as empty texts, with
    ``missing="zero"`` they are left out of training. A fitted pipeline's pickle refers to the
    checkpoint folder, which must still be there when it is loaded.

    Examples
    --------
    >>> import tempfile
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sk_instructor import InstructorFineTuner
    >>> reviews = ["A joy to watch", "Loved every minute", "Dull and far too long",
    ...            "A waste of an evening"]
    >>> tuner = InstructorFineTuner(
    ...     "hkunlp/instructor-large", domain="Movie", text_type="review",
    ...     objective="classifying sentiment", random_state=0, output_dir=tempfile.mkdtemp(),
    ... )
    >>> clf = make_pipeline(tuner, LogisticRegression()).fit(reviews, [1, 1, 0, 0])
    >>> clf.predict(["Loved it"]).shape
    (1,)
    >>> tuner.instruction_
    'Represent the Movie review for classifying sentiment: '

    The tuned checkpoint loads like any other:

    >>> from sk_instructor import InstructorVectorizer
    >>> InstructorVectorizer(tuner.model_path_).fit_transform(["Loved it"]).shape
    (1, 768)
    """

    _parameter_constraints: ClassVar[dict] = {
        **params.constraints(("model", *params.INSTRUCTION, *params.ENGINE)),
        "pairs_per_text": [Interval(Integral, 1, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "train_batch_size": [Interval(Integral, 1, None, closed="left")],
        "loss": [StrOptions(set(LOSSES))],
        "random_state": ["random_state"],
        "output_dir": [str, os.PathLike, None],
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
        pairs_per_text: int = 20,
        epochs: int = 1,
        learning_rate: float = 2e-5,
        train_batch_size: int = 16,
        loss: str = "cosine",
        random_state: Any = None,
        output_dir: str | os.PathLike[str] | None = None,
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
        self.pairs_per_text = pairs_per_text
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.train_batch_size = train_batch_size
        self.loss = loss
        self.random_state = random_state
        self.output_dir = output_dir
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
    def fit(self, X: Any, y: Any) -> InstructorFineTuner:
        """Fine-tune the encoder on ``X`` and its labels ``y``; save the tuned checkpoint.

        Parameters
        ----------
        X : list of str, 1-D array, Series, or one-column DataFrame
            Training texts.
        y : array-like of shape (n_texts,)
            Their class labels: at least two classes, and at least two texts of each.

        Returns
        -------
        self : InstructorFineTuner
            The fitted estimator.
        """
        column = read_text_column(X)
        if not column.texts:
            raise ValueError(
                "Found array with 0 sample(s) (shape=(0,)) while a minimum of 1 is required: "
                "fine-tuning needs labelled texts."
            )
        self._check_missing(column)
        validate_data(self, X, reset=True, skip_check_array=True, ensure_2d=False)
        self.n_features_in_ = 1
        texts, codes = self._training_data(column, y)
        self.instruction_ = resolve_instruction(params.values(self, params.INSTRUCTION), DEFAULTS)
        # backend="openvino" runs on the CPU: training too, so that fit and transform agree.
        self.device_ = resolve_device(self.device, self.backend)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        result = fine_tune(
            model=self.model,
            instruction=self.instruction_,
            texts=texts,
            codes=codes,
            training=TrainingSettings(
                pairs_per_text=int(self.pairs_per_text),
                epochs=int(self.epochs),
                learning_rate=float(self.learning_rate),
                batch_size=int(self.train_batch_size),
                loss=self.loss,
                seed=seed,
            ),
            revision=self.revision,
            local_files_only=self.local_files_only,
            device=self.device_,
            dtype=self.dtype,
            max_seq_length=self.max_seq_length,
            output_dir=self.output_dir,
            show_progress_bar=self.show_progress_bar,
        )
        self.model_path_ = str(result.path)
        self.training_loss_ = list(result.epoch_losses)
        self.n_training_pairs_ = result.n_pairs
        self.n_training_steps_ = result.n_steps
        self.embedding_dim_ = self._encoder().embedding_dim
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Embed each text of ``X`` with the tuned encoder, under ``instruction_``.

        Parameters
        ----------
        X : list of str, 1-D array, Series, or one-column DataFrame
            Texts to embed.

        Returns
        -------
        ndarray of shape (n_texts, embedding_dim_), float32
            One row per text; zero rows for missing texts when ``missing="zero"``.
        """
        check_is_fitted(self, "model_path_")
        column = read_text_column(X)
        validate_data(self, X, reset=False, skip_check_array=True, ensure_2d=False)
        self._check_missing(column)
        if not Path(self.model_path_).is_dir():
            raise ModelNotFoundError(
                f"the fine-tuned checkpoint of this estimator, {self.model_path_}, is gone "
                f"(deleted, or this estimator was fitted on another machine): fit it again, "
                f"or copy the folder back to that path."
            )
        instructions = [self.instruction_] * len(column.texts)
        with text_progress(
            self.show_progress_bar,
            instructions,
            column.texts,
            self.max_seq_length,
            missing=self.missing,
        ) as advance:
            return self._encoder().encode(instructions, column.texts, progress=advance)

    def __sklearn_tags__(self):
        tags = text_input_tags(super().__sklearn_tags__(), missing=self.missing)
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = self.random_state is None
        return tags

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(params.restore_defaults(self, state))
        fall_back_from_a_missing_device(self, "fine-tuner")

    # -- internals -----------------------------------------------------------------------------
    def _encoder(self) -> Encoder:
        """The engine's entry on the tuned checkpoint, with this estimator's settings: the
        vectorizer's, with ``model=model_path_``."""
        settings = EncodingSettings.from_parameters(
            self.get_params(deep=False),
            model=self.model_path_,
            revision=None,
            local_files_only=False,
            device=self.device_,
        )
        return Encoder(settings, resolve_cache(self.cache))

    def _check_missing(self, column: TextColumn) -> None:
        if column.missing_rows and self.missing == "error":
            raise ValueError(
                f"X has missing values (None, NaN or pd.NA) at "
                f"{describe_rows(column.missing_rows, column.index)}. Drop or fill them, or set "
                f"missing='empty' (an empty text) or missing='zero' (left out of training, a "
                f"zero vector at transform)."
            )

    def _training_data(self, column: TextColumn, y: Any) -> tuple[list[str], np.ndarray]:
        """The texts to train on and their class codes, after checking ``y``."""
        if y is None:
            raise ValueError(
                "InstructorFineTuner requires y to be passed, but the target y is None: "
                "fine-tuning learns from labelled texts."
            )
        y = column_or_1d(y, warn=True)
        if len(y) != len(column.texts):
            raise ValueError(
                f"X has {len(column.texts)} texts but y has {len(y)} labels: give one label "
                f"per text."
            )
        check_classification_targets(y)
        texts = column.texts
        if self.missing == "zero" and column.missing_rows:
            kept = [row for row, text in enumerate(texts) if text is not None]
            texts, y = [texts[row] for row in kept], y[kept]
        texts = ["" if text is None else text for text in texts]
        classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            found = f"a single class, {_plain(classes[0])!r}" if len(classes) else "no label"
            raise ValueError(
                f"y has {found}: fine-tuning contrasts texts of the same class with texts of "
                f"other classes, so it needs at least two classes."
            )
        scarce = [(label, count) for label, count in zip(classes, counts, strict=True) if count < 2]
        if scarce:
            label, count = _plain(scarce[0][0]), scarce[0][1]
            others = f" (and {len(scarce) - 1} other class(es))" if len(scarce) > 1 else ""
            raise ValueError(
                f"y has {count} example of class {label!r}{others}: fine-tuning needs at least "
                f"2 texts of each class (a positive pair is two texts of one class). Add "
                f"examples of it or leave that class out."
            )
        return texts, codes.astype(np.int64)


def _plain(label: Any) -> Any:
    """A label as the user wrote it: ``1`` or ``'pos'``, not ``np.int64(1)``."""
    return label.item() if isinstance(label, np.generic) else label
