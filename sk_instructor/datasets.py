"""Small real text datasets that work offline, read from gensim's bundled test data.

gensim ships a few classic corpora as test fixtures under ``gensim/test/test_data/``. These
loaders locate that folder with :func:`importlib.util.find_spec` (gensim itself is never
imported) and return :class:`sklearn.utils.Bunch` objects in the style of
:mod:`sklearn.datasets`. Install the data with ``pip install gensim`` or
``pip install "sk-instructor[datasets]"``.

============================  =======  ====================================================
loader                        size     task
============================  =======  ====================================================
:func:`load_lee`              50 docs  document similarity (STS-style), 1,225 rated pairs
:func:`load_mini_newsgroups`  200      binary classification (alt.atheism / sci.space)
:func:`load_polarity`         200      binary sentiment (neg / pos)
:func:`load_lee_background`   300      unlabelled news documents (throughput benchmarks)
============================  =======  ====================================================
"""

from __future__ import annotations

import copyreg
import importlib.util
import io
import pickle
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

__all__ = [
    "load_lee",
    "load_lee_background",
    "load_lee_retrieval",
    "load_mini_newsgroups",
    "load_polarity",
]

_INSTALL_HINT = 'pip install gensim  (or: pip install "sk-instructor[datasets]")'


def _gensim_test_data() -> Path:
    """Folder of gensim's bundled test data, found without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise ImportError(
            "The sk_instructor.datasets loaders read the corpora that the gensim package ships "
            f"as test data, and gensim is not installed. Install it with: {_INSTALL_HINT}"
        )
    if spec.submodule_search_locations:
        package_dir = Path(next(iter(spec.submodule_search_locations)))
    else:
        package_dir = Path(spec.origin).parent
    data_dir = package_dir / "test" / "test_data"
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"gensim is installed at {package_dir} but has no test/test_data folder; this "
            f"gensim build omits its test data. Reinstall it from PyPI: {_INSTALL_HINT}"
        )
    return data_dir


def _data_file(name: str) -> Path:
    path = _gensim_test_data() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} is missing from gensim's test data folder {path.parent}; the installed "
            f"gensim version does not ship it. Reinstall gensim>=4.3: {_INSTALL_HINT}"
        )
    return path


def _read_lines(name: str, encoding: str) -> list[str]:
    """Non-empty lines of a one-document-per-line file, surrounding whitespace stripped."""
    text = _data_file(name).read_bytes().decode(encoding)
    return [line.strip() for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Lee corpus
# --------------------------------------------------------------------------------------------

_LEE_DESCR = """\
Lee corpus (document similarity)
--------------------------------

50 short news articles from the Australian Broadcasting Corporation's news mail service, with
human similarity ratings for each of the 1,225 unordered pairs of distinct documents, collected
by Lee, Pincombe and Welsh (2005), "An empirical evaluation of models of text document
similarity", Proceedings of CogSci 2005. Judges rated pairs on a 1-5 scale; the score here is
the mean rating divided by 5, so it lies in [0.2, 1.0]. The usual evaluation is the Pearson or
Spearman correlation between model similarities and these scores.

Read from gensim's test data: ``lee.cor`` (one document per line, Latin-1) and
``similarities0-1.txt`` (a 50 x 50 tab-separated upper-triangular matrix, 1 on the diagonal).
Pairs are listed in ``numpy.triu_indices(50, k=1)`` order.
"""

_N_LEE_DOCUMENTS = 50


def load_lee(*, return_X_y: bool = False) -> Bunch | tuple[np.ndarray, np.ndarray]:
    """Load the Lee corpus: 50 news documents and human ratings of their pairwise similarity.

    Parameters
    ----------
    return_X_y : bool, default=False
        If True, return ``(X, y)`` for a similarity regression: ``X`` holds the two texts of
        each rated pair, ``y`` its score.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the keys:

        documents : list of str, length 50
            The news documents.
        pairs : pandas.DataFrame with 1,225 rows
            Columns ``doc_i`` and ``doc_j`` (positions in ``documents``, ``doc_i < doc_j``)
            and ``score`` (mean human rating / 5, in [0.2, 1.0]).
        similarity : ndarray of shape (50, 50)
            The same scores as a symmetric matrix, 1 on the diagonal.
        DESCR : str
            Description of the dataset.
    (X, y) : tuple
        If ``return_X_y``: ``X`` an object ndarray of shape (1225, 2) with the texts of
        ``doc_i`` and ``doc_j``, ``y`` a float ndarray of shape (1225,) with the scores.

    Raises
    ------
    ImportError
        If gensim, which ships the data, is not installed.

    Examples
    --------
    >>> from sk_instructor.datasets import load_lee
    >>> lee = load_lee()
    >>> len(lee.documents), lee.pairs.shape
    (50, (1225, 3))
    >>> X, y = load_lee(return_X_y=True)
    >>> X.shape, y.shape
    ((1225, 2), (1225,))
    """
    # Latin-1 as gensim's own Lee test reads it (the file has a pound sign in that encoding).
    documents = _read_lines("lee.cor", encoding="latin-1")
    upper = np.loadtxt(_data_file("similarities0-1.txt"), dtype=np.float64)
    if len(documents) != _N_LEE_DOCUMENTS or upper.shape != (_N_LEE_DOCUMENTS,) * 2:
        raise ValueError(
            f"unexpected Lee data in {_gensim_test_data()}: {len(documents)} documents and a "
            f"{upper.shape} similarity matrix, expected 50 and (50, 50)."
        )
    doc_i, doc_j = np.triu_indices(_N_LEE_DOCUMENTS, k=1)
    scores = upper[doc_i, doc_j]
    if return_X_y:
        texts = np.asarray(documents, dtype=object)
        return np.column_stack([texts[doc_i], texts[doc_j]]), scores
    similarity = np.triu(upper, k=1)
    similarity = similarity + similarity.T + np.eye(_N_LEE_DOCUMENTS)
    pairs = pd.DataFrame({"doc_i": doc_i, "doc_j": doc_j, "score": scores})
    return Bunch(documents=documents, pairs=pairs, similarity=similarity, DESCR=_LEE_DESCR)


_LEE_BACKGROUND_DESCR = """\
Lee background corpus
---------------------

300 news documents without labels or ratings: the background corpus that gensim's Lee
evaluation trains its models on before scoring the 50 rated documents (see ``load_lee``).
Documents run from a few sentences to a few paragraphs (about 300 to 3,800 characters),
realistic lengths for measuring embedding throughput.

Read from gensim's test data: ``lee_background.cor`` (one document per line).
"""


def load_lee_background() -> Bunch:
    """Load the 300 unlabelled news documents of the Lee background corpus.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the keys ``data`` (list of 300 str) and ``DESCR`` (str).

    Raises
    ------
    ImportError
        If gensim, which ships the data, is not installed.

    Examples
    --------
    >>> from sk_instructor.datasets import load_lee_background
    >>> len(load_lee_background().data)
    300
    """
    documents = _read_lines("lee_background.cor", encoding="latin-1")
    return Bunch(data=documents, DESCR=_LEE_BACKGROUND_DESCR)


_LEE_RETRIEVAL_DESCR = """\
Lee lead-sentence retrieval task
--------------------------------

Built from the Lee background corpus (see ``load_lee_background``): each article's lead sentence
is a query, and the rest of the article, with the lead removed, is its one relevant document.
Query ``i``'s relevant document is document ``i``. A lead "sentence" shorter than six words was
cut at an abbreviation ("U.S.") and takes the next sentence along; repeated articles are kept
once (two identical documents would make the task ambiguous), and articles with nothing after
the lead are dropped: 293 queries and documents in all.
"""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_MIN_QUERY_WORDS = 6


def load_lee_retrieval(
    *, n_articles: int | None = None, return_X_y: bool = False
) -> Bunch | tuple[list[str], list[str]]:
    """Load a query -> document retrieval task built from the Lee background news articles.

    Parameters
    ----------
    n_articles : int or None, default=None
        Use only the first ``n_articles`` articles (before duplicates are dropped).
    return_X_y : bool, default=False
        If True, return ``(queries, documents)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the keys ``queries`` (list of str), ``documents`` (list of str), ``relevant``
        (ndarray: the relevant document of each query, ``relevant[i] == i``) and ``DESCR``.
    (queries, documents) : tuple of two lists of str
        If ``return_X_y``.

    Raises
    ------
    ImportError
        If gensim, which ships the data, is not installed.

    Examples
    --------
    >>> from sk_instructor.datasets import load_lee_retrieval
    >>> task = load_lee_retrieval()
    >>> len(task.queries) == len(task.documents) == len(task.relevant)
    True
    """
    articles = load_lee_background().data[:n_articles]
    queries, documents = [], []
    for article in dict.fromkeys(article.strip() for article in articles):
        sentences = _SENTENCE_END.split(article)
        taken = 1
        while taken < len(sentences) and len(" ".join(sentences[:taken]).split()) < (
            _MIN_QUERY_WORDS
        ):
            taken += 1
        rest = " ".join(sentences[taken:]).strip()
        if rest:
            queries.append(" ".join(sentences[:taken]))
            documents.append(rest)
    if return_X_y:
        return queries, documents
    return Bunch(
        queries=queries,
        documents=documents,
        relevant=np.arange(len(queries)),
        DESCR=_LEE_RETRIEVAL_DESCR,
    )


# --------------------------------------------------------------------------------------------
# Mini 20 Newsgroups
# --------------------------------------------------------------------------------------------

_NEWSGROUPS_DESCR = """\
Mini 20 Newsgroups (alt.atheism vs sci.space)
---------------------------------------------

200 Usenet posts from the 20 Newsgroups collection (Lang, 1995), 100 from alt.atheism
(target 0) and 100 from sci.space (target 1), in the order gensim stores them.

With ``remove_headers=True`` (the default) each post loses its header block, which names the
newsgroup and would leak the label: everything up to the first blank line goes, as in
``sklearn.datasets.fetch_20newsgroups(remove=("headers",))``, and so does a second header block
that a news gateway left at the top of one post. Quoted replies and signatures are kept; they
may still mention a group name in passing.

Read from gensim's test data: ``mini_newsgroup``, a zlib-compressed Python 2 pickle of an old
scikit-learn Bunch, loaded with an unpickler that only accepts dicts and NumPy arrays. The
original file paths (which contain the group names) are not returned.
"""

# Module-level functions the pickle may name, and what to build instead. Anything else in a
# GLOBAL opcode raises, so a tampered file cannot make the loader call os.system and the like.
# copyreg._reconstructor only calls ``base.__new__(cls, state)`` on classes that themselves
# had to pass this table.
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]
_PICKLE_ALLOWLIST: dict[tuple[str, str], Any] = {
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("__builtin__", "dict"): dict,
    ("builtins", "dict"): dict,
    # The file was written by scikit-learn 0.x; its Bunch is a dict subclass.
    ("sklearn.datasets.base", "Bunch"): dict,
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_PICKLE_ALLOWLIST``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWLIST[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: the dataset pickle may only contain "
                "dicts, lists, strings and NumPy arrays."
            ) from None


def _restricted_loads(payload: bytes) -> Any:
    """Unpickle ``payload`` allowing nothing but the allowlisted globals."""
    # latin-1 maps Python 2 byte strings (NumPy buffers among them) one-to-one onto str,
    # which is what NumPy expects when it unpickles Python 2 arrays.
    return _RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()


_HEADER_FIELD = re.compile(
    r"^(?:from|to|subject|newsgroups|path|xref|message-id|organization|date|lines|sender|"
    r"references|reply-to|distribution|nntp-posting-host|keywords|summary|followup-to|"
    r"expires|article-i\.d\.|news-software|originator|x-newsreader):",
    re.IGNORECASE,
)


def _looks_like_header_block(block: str) -> bool:
    """A paragraph that starts with a news header field and holds at least two of them."""
    lines = block.splitlines()
    return (
        bool(lines)
        and _HEADER_FIELD.match(lines[0]) is not None
        and sum(_HEADER_FIELD.match(line) is not None for line in lines) >= 2
    )


def _strip_newsgroup_header(post: str) -> str:
    """Drop the header block: everything up to the first blank line, like sklearn does.

    Header-like blocks right after it are dropped too: one post in this file carries a second
    header block (with ``Newsgroups: sci.space``) that a mail-to-news gateway put in its body.
    """
    _, _, body = post.partition("\n\n")
    while True:
        block, blank, rest = body.partition("\n\n")
        if not blank or not _looks_like_header_block(block):
            return body
        body = rest


def load_mini_newsgroups(
    *, return_X_y: bool = False, remove_headers: bool = True
) -> Bunch | tuple[list[str], np.ndarray]:
    """Load 200 20-Newsgroups posts, alt.atheism (0) versus sci.space (1).

    Parameters
    ----------
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.
    remove_headers : bool, default=True
        Drop each post's header block, which names the newsgroup and so gives the label away.
        Only set it to False to look at the raw posts.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the keys:

        data : list of str, length 200
            The posts.
        target : ndarray of shape (200,), dtype int64
            0 for alt.atheism, 1 for sci.space.
        target_names : list of str
            ``["alt.atheism", "sci.space"]``.
        DESCR : str
            Description of the dataset.
    (data, target) : tuple
        If ``return_X_y``.

    Raises
    ------
    ImportError
        If gensim, which ships the data, is not installed.
    pickle.UnpicklingError
        If the file refers to anything but dicts and NumPy arrays.

    Examples
    --------
    >>> from sk_instructor.datasets import load_mini_newsgroups
    >>> news = load_mini_newsgroups()
    >>> len(news.data), news.target_names
    (200, ['alt.atheism', 'sci.space'])
    >>> any(post.startswith("Newsgroups:") for post in news.data)
    False
    """
    payload = zlib.decompress(_data_file("mini_newsgroup").read_bytes())
    raw = _restricted_loads(payload)
    posts = [str(post) for post in raw["data"]]
    if remove_headers:
        posts = [_strip_newsgroup_header(post) for post in posts]
    target = np.asarray(raw["target"], dtype=np.int64)
    target_names = [str(name) for name in raw["target_names"]]
    if return_X_y:
        return posts, target
    return Bunch(data=posts, target=target, target_names=target_names, DESCR=_NEWSGROUPS_DESCR)


# --------------------------------------------------------------------------------------------
# Sentence polarity
# --------------------------------------------------------------------------------------------

_POLARITY_DESCR = """\
Sentence polarity (Pang and Lee)
--------------------------------

200 single-sentence movie review snippets labelled negative (target 0) or positive
(target 1), 100 of each, from the sentence polarity dataset v1.0 of Pang and Lee (2005),
"Seeing stars: exploiting class relationships for sentiment categorization with respect to
rating scales", Proceedings of ACL 2005. Text is lower-cased and tokenized with spaces around
punctuation, as in the original release. Rows keep gensim's file order (all negatives first):
shuffle before a plain, unstratified split.

Read from gensim's test data: ``pang_lee_polarity.cor`` (fastText format, one
``__label__neg`` / ``__label__pos`` line per sentence, Windows-1252 text).
"""

_POLARITY_LABELS = ("__label__neg", "__label__pos")


def load_polarity(*, return_X_y: bool = False) -> Bunch | tuple[list[str], np.ndarray]:
    """Load 200 movie-review sentences labelled negative (0) or positive (1).

    Parameters
    ----------
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the keys:

        data : list of str, length 200
            The sentences, label prefix removed.
        target : ndarray of shape (200,), dtype int64
            0 for negative, 1 for positive.
        target_names : list of str
            ``["neg", "pos"]``.
        DESCR : str
            Description of the dataset.
    (data, target) : tuple
        If ``return_X_y``.

    Raises
    ------
    ImportError
        If gensim, which ships the data, is not installed.

    Examples
    --------
    >>> from sk_instructor.datasets import load_polarity
    >>> sentences, labels = load_polarity(return_X_y=True)
    >>> len(sentences), int(labels.sum())
    (200, 100)
    """
    # Windows-1252, not Latin-1: the file's 0x97 bytes are em dashes.
    lines = _read_lines("pang_lee_polarity.cor", encoding="cp1252")
    sentences, target = [], []
    for line_number, line in enumerate(lines, start=1):
        label, _, sentence = line.partition(" ")
        if label not in _POLARITY_LABELS:
            raise ValueError(
                f"pang_lee_polarity.cor line {line_number} starts with {label!r}, expected "
                f"one of {_POLARITY_LABELS}."
            )
        sentences.append(sentence.strip())
        target.append(_POLARITY_LABELS.index(label))
    target_array = np.asarray(target, dtype=np.int64)
    if return_X_y:
        return sentences, target_array
    return Bunch(
        data=sentences, target=target_array, target_names=["neg", "pos"], DESCR=_POLARITY_DESCR
    )
