"""Warnings that point at the user's code and are said once per cause.

A warning raised deep in the engine or the cache would otherwise name a line of this package,
and a grid search that refits a hundred clones would repeat it a hundred times. :func:`warn`
attributes the warning to the first frame outside this package and the libraries that drive it
(scikit-learn, joblib), and says each cause once per process.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Hashable

__all__ = ["forget_said", "warn"]

# Frames in these folders are never "the caller": this package, and the libraries that call
# estimators on the user's behalf.
_PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_roots() -> tuple[str, ...]:
    roots = [_PACKAGE_ROOT]
    for name in ("sklearn", "joblib"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            roots.append(os.path.dirname(os.path.abspath(module.__file__)) + os.sep)
    return tuple(roots)


_SAID: set[Hashable] = set()
_SAID_LOCK = threading.Lock()


def warn(message: str, category: type[Warning] = UserWarning, *, cause: Hashable = None) -> None:
    """Warn with ``message``, attributed to the user's code; once per ``cause`` if given.

    Parameters
    ----------
    message : str
        What happened and what to do about it.
    category : Warning subclass, default=UserWarning
        The warning's class.
    cause : hashable or None, default=None
        What the warning is about, e.g. ``("truncation", fingerprint, 512)``. A cause already
        warned about in this process is not warned about again. ``None``: always warn. Name the
        cause, never the occasion: no counts, sizes or other numbers that differ from call to
        call (the message may hold them), or a cause met batch after batch, a full disk under
        a cache say, is warned about once per batch.

    Examples
    --------
    >>> import warnings
    >>> from sk_instructor._warnings import forget_said, warn
    >>> forget_said()
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     for n_vectors in (16, 16, 7):
    ...         warn(f"could not store {n_vectors} vectors", cause=("store", "disk full"))
    >>> [str(warning.message) for warning in caught]
    ['could not store 16 vectors']
    """
    if cause is not None:
        with _SAID_LOCK:
            if cause in _SAID:
                return
            _SAID.add(cause)
    warnings.warn(message, category, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn`` (called from :func:`warn`) name the
    first frame outside this package, scikit-learn and joblib."""
    roots = _library_roots()
    frame = sys._getframe(2)  # the caller of warn()
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(roots):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2


def forget_said() -> None:
    """Forget which causes were warned about, so that each is said again (for tests)."""
    with _SAID_LOCK:
        _SAID.clear()
