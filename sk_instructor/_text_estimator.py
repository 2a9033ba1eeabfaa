"""What the estimators that take texts share: their input tags, their output's names, and the
device they ran on when they are unpickled on another machine.

:class:`~sk_instructor.InstructorVectorizer`, :class:`~sk_instructor.InstructorFineTuner` and
:class:`~sk_instructor.InstructorRetriever` read texts in a 1-D container or a single column
``(n, 1)`` (a one-column DataFrame included); the two transformers output ``embedding_dim_``
float32 columns. Kept in one place so that the three cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin
from sklearn.utils.validation import check_is_fitted

from ._engine.entry import resolve_device
from ._warnings import warn

__all__ = ["EmbeddingOutputMixin", "fall_back_from_a_missing_device", "text_input_tags"]


def text_input_tags(tags: Any, *, missing: str) -> Any:
    """Set scikit-learn's input tags of an estimator that reads texts; returns ``tags``.

    The honest description: strings, as a 1-D container or a single column. scikit-learn's
    estimator checks run only when ``two_d_array`` is True (and they feed random numbers
    whatever ``string`` says); see tests/test_estimator_checks.py for what that means here.
    """
    tags.input_tags.string = True
    tags.input_tags.one_d_array = True
    tags.input_tags.two_d_array = True
    tags.input_tags.allow_nan = missing in ("empty", "zero")
    tags.requires_fit = True
    return tags


class EmbeddingOutputMixin(ClassNamePrefixFeaturesOutMixin):
    """Output names ``<class name in lower case>0`` ... for ``embedding_dim_`` float32 columns."""

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output names, the class name in lower case and a number, one per embedding dimension
        (``instructorvectorizer0``, ...).

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against the column name seen in ``fit``.

        Returns
        -------
        feature_names_out : ndarray of str objects
            ``embedding_dim_`` names.
        """
        check_is_fitted(self, "embedding_dim_")
        return super().get_feature_names_out(input_features)

    @property
    def _n_features_out(self) -> int:
        return self.embedding_dim_


def fall_back_from_a_missing_device(estimator: Any, what: str) -> None:
    """An estimator fitted on a GPU machine keeps working where there is none: its recorded
    ``device_`` is resolved again here and, when this machine lacks it, replaced by the
    default device, with a warning naming both. ``what`` names the estimator in it."""
    recorded = getattr(estimator, "device_", None)
    if recorded is None or recorded.startswith("cpu"):
        return
    try:
        resolve_device(recorded)
    except ValueError:
        fallback = resolve_device("auto")
        warn(
            f"this {what} ran on {recorded!r}, which this machine lacks; using {fallback!r} "
            f"instead.",
            RuntimeWarning,
            cause=("recorded device missing", recorded, fallback),
        )
        estimator.device_ = fallback
