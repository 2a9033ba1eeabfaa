"""Offline loaders for gensim's bundled corpora, and the restricted unpickler they rely on."""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets._twenty_newsgroups import strip_newsgroup_header
from sklearn.utils import Bunch

from sk_instructor import datasets
from sk_instructor.datasets import (
    load_lee,
    load_lee_background,
    load_mini_newsgroups,
    load_polarity,
)

HEADER_LINE = re.compile(r"^(From|Subject|Newsgroups|Path|Xref|Message-ID|Organization):", re.M)


@pytest.fixture(scope="module")
def lee():
    return load_lee()


@pytest.fixture(scope="module")
def raw_news():
    return load_mini_newsgroups(remove_headers=False)


@pytest.fixture(scope="module")
def news():
    return load_mini_newsgroups()


# ------------------------------------------------------------------------------------------
# Lee corpus
# ------------------------------------------------------------------------------------------


def test_lee_sizes(lee):
    assert isinstance(lee, Bunch)
    assert len(lee.documents) == 50
    assert all(isinstance(doc, str) and doc for doc in lee.documents)
    assert isinstance(lee.pairs, pd.DataFrame)
    assert list(lee.pairs.columns) == ["doc_i", "doc_j", "score"]
    assert len(lee.pairs) == 50 * 49 // 2 == 1225
    assert "Lee" in lee.DESCR


def test_lee_pairs_cover_each_unordered_pair_once(lee):
    pairs = set(zip(lee.pairs.doc_i, lee.pairs.doc_j, strict=True))
    assert pairs == {(i, j) for i in range(50) for j in range(i + 1, 50)}


def test_lee_scores_match_the_file_by_hand(lee):
    # similarities0-1.txt row 0 starts "1 0.3 0.24 0.2"; row 48 ends "1 0.36".
    score = lee.pairs.set_index(["doc_i", "doc_j"]).score
    assert score[0, 1] == pytest.approx(0.3)
    assert score[0, 2] == pytest.approx(0.24)
    assert score[0, 3] == pytest.approx(0.2)
    assert score[48, 49] == pytest.approx(0.36)
    assert lee.pairs.score.between(0.2, 1.0).all()


def test_lee_similarity_matrix_is_symmetric_with_unit_diagonal(lee):
    assert lee.similarity.shape == (50, 50)
    np.testing.assert_array_equal(lee.similarity, lee.similarity.T)
    np.testing.assert_array_equal(np.diag(lee.similarity), np.ones(50))
    assert lee.similarity[3, 0] == lee.similarity[0, 3] == pytest.approx(0.2)


def test_lee_text_is_decoded(lee):
    assert lee.documents[0].startswith("The national executive of the strife-torn Democrats")
    joined = " ".join(lee.documents)
    assert "£" in joined  # the file is Latin-1
    assert "\ufffd" not in joined


def test_lee_return_X_y_gives_text_pairs_and_scores(lee):
    X, y = load_lee(return_X_y=True)
    assert X.shape == (1225, 2)
    assert y.shape == (1225,)
    assert tuple(X[0]) == (lee.documents[0], lee.documents[1])
    assert tuple(X[-1]) == (lee.documents[48], lee.documents[49])
    np.testing.assert_array_equal(y, lee.pairs.score.to_numpy())


def test_lee_background_has_300_documents():
    background = load_lee_background()
    assert isinstance(background, Bunch)
    assert len(background.data) == 300
    assert all(isinstance(doc, str) and len(doc) > 100 for doc in background.data)
    assert background.DESCR


# ------------------------------------------------------------------------------------------
# Mini newsgroups
# ------------------------------------------------------------------------------------------


def test_newsgroups_sizes_and_balance(news):
    assert isinstance(news, Bunch)
    assert len(news.data) == 200
    assert news.target.dtype == np.int64
    assert news.target_names == ["alt.atheism", "sci.space"]
    np.testing.assert_array_equal(np.bincount(news.target), [100, 100])
    assert all(isinstance(post, str) and post.strip() for post in news.data)


def test_raw_headers_name_the_group_of_each_label(raw_news):
    # Shows why headers must go: each raw post's Newsgroups line names its label's group.
    for post, label in zip(raw_news.data, raw_news.target, strict=True):
        groups = re.search(r"^Newsgroups: (.*)$", post, re.M).group(1).split(",")
        assert raw_news.target_names[label] in groups


def test_headers_are_stripped(news):
    for index, post in enumerate(news.data):
        assert HEADER_LINE.search(post) is None, f"post {index} still has a header line"


def test_header_stripping_removes_only_a_prefix(news, raw_news):
    for stripped, raw in zip(news.data, raw_news.data, strict=True):
        assert raw.endswith(stripped)


def test_header_stripping_matches_sklearn_except_for_the_nested_header(news, raw_news):
    differing = [
        index
        for index, raw in enumerate(raw_news.data)
        if news.data[index] != strip_newsgroup_header(raw)
    ]
    # One post carries a second header block (a mail gateway's) that sklearn's rule keeps.
    assert len(differing) == 1
    leftover = strip_newsgroup_header(raw_news.data[differing[0]])
    assert HEADER_LINE.search(leftover.partition("\n\n")[0])


def test_newsgroups_return_X_y():
    data, target = load_mini_newsgroups(return_X_y=True)
    assert len(data) == target.shape[0] == 200


def test_newsgroups_do_not_return_file_paths(news):
    # The original paths contain the group names.
    assert "filenames" not in news


# ------------------------------------------------------------------------------------------
# Restricted unpickler
# ------------------------------------------------------------------------------------------


class _RunsCommand:
    def __reduce__(self):
        return (os.system, ("echo",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_refuses_os_system(protocol, monkeypatch):
    payload = pickle.dumps(_RunsCommand(), protocol=protocol)
    calls = []
    # Belt and braces: had the unpickler resolved the global, nothing would run anyway.
    monkeypatch.setattr(sys.modules[os.system.__module__], "system", calls.append)
    monkeypatch.setattr(os, "system", calls.append)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global \w+\.system"):
        datasets._restricted_loads(payload)
    assert calls == []


def test_restricted_unpickler_refuses_other_builtins():
    payload = pickle.dumps(eval, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        datasets._restricted_loads(payload)


def test_restricted_unpickler_loads_plain_containers():
    # NumPy arrays are exercised by the real file (a Python 2 pickle) in the tests above.
    original = {"names": ["a", "b"], "sizes": (1, 2.5), "flag": None}
    assert datasets._restricted_loads(pickle.dumps(original, protocol=2)) == original


# ------------------------------------------------------------------------------------------
# Polarity
# ------------------------------------------------------------------------------------------


def test_polarity_sizes_and_balance():
    polarity = load_polarity()
    assert len(polarity.data) == 200
    assert polarity.target_names == ["neg", "pos"]
    np.testing.assert_array_equal(np.bincount(polarity.target), [100, 100])
    assert polarity.data[0] == "simplistic , silly and tedious ."
    assert polarity.target[0] == 0
    assert not any("__label__" in sentence for sentence in polarity.data)


def test_polarity_text_is_decoded_as_windows_1252():
    sentences = load_polarity().data
    assert any("—" in sentence for sentence in sentences)  # byte 0x97
    assert any("amélie" in sentence for sentence in sentences)


def test_polarity_return_X_y():
    data, target = load_polarity(return_X_y=True)
    assert len(data) == target.shape[0] == 200
    assert target.dtype == np.int64


# ------------------------------------------------------------------------------------------
# gensim missing
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loader", [load_lee, load_lee_background, load_mini_newsgroups, load_polarity]
)
def test_missing_gensim_is_a_clear_import_error(loader, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec_without_gensim(name, *args, **kwargs):
        if name == "gensim":
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without_gensim)
    with pytest.raises(ImportError, match="gensim is not installed") as error:
        loader()
    assert "pip install gensim" in str(error.value)
    assert 'pip install "sk-instructor[datasets]"' in str(error.value)


def test_lee_retrieval_pairs_each_lead_with_the_rest_of_its_article():
    task = datasets.load_lee_retrieval()
    articles = [article.strip() for article in datasets.load_lee_background().data]
    assert len(task.queries) == len(task.documents) == len(task.relevant) == 293
    np.testing.assert_array_equal(task.relevant, np.arange(293))
    assert len(set(task.documents)) == len(task.documents)  # no ambiguous duplicate answers
    for query, document in zip(task.queries, task.documents, strict=True):
        assert query not in document  # the lead is removed from its document
        assert f"{query} {document}" in articles or any(
            article.startswith(query) and article.endswith(document) for article in articles
        )
    assert all(len(query.split()) >= 6 for query in task.queries)


def test_lee_retrieval_return_x_y_and_subset():
    queries, documents = datasets.load_lee_retrieval(n_articles=40, return_X_y=True)
    assert 0 < len(queries) == len(documents) <= 40
