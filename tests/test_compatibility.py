"""What users saved with an earlier version keeps loading.

The pickles in tests/data/ were written by sk_instructor 0.1.0 (see tests/data/README.md): a
fitted vectorizer, one configured with an on-disk cache, and the DiskCache alone. Their model
folder no longer exists, so the loaded vectorizer is pointed at a new one, as a user moving a
pipeline to another machine would.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from sk_instructor import DiskCache, InstructorVectorizer

DATA = Path(__file__).resolve().parent / "data"
TEXTS = ["Parton energy loss in QCD matter", "Dark matter halos"]


def _load(name: str):
    return pickle.loads((DATA / name).read_bytes())


def test_a_vectorizer_fitted_by_0_1_0_loads_and_transforms(tiny_t5_path):
    vectorizer = _load("vectorizer-0.1.0.pkl")
    assert isinstance(vectorizer, InstructorVectorizer)
    assert vectorizer.instruction_ == "Represent the Science title: "
    assert vectorizer.embedding_dim_ == 16 and vectorizer.device_ == "cpu"
    assert vectorizer.get_params()["domain"] == "Science"
    vectorizer.set_params(model=tiny_t5_path, cache=None)
    fresh = InstructorVectorizer(tiny_t5_path, domain="Science", text_type="title", cache=None)
    np.testing.assert_allclose(
        vectorizer.transform(TEXTS), fresh.fit(TEXTS).transform(TEXTS), atol=1e-6
    )


def test_a_disk_cache_pickled_by_0_1_0_loads_as_the_same_store():
    cache = _load("disk-cache-0.1.0.pkl")
    assert isinstance(cache, DiskCache)
    assert cache.path == Path("/nonexistent/sk-instructor-0.1.0-cache/embeddings.sqlite3")
    # One object per store in a process, whichever way it was unpickled.
    assert _load("vectorizer-disk-cache-0.1.0.pkl").cache is cache
