"""sk_instructor.ray.embed_dataset with long_text="chunk": the actors chunk as the vectorizer does.

Same local Ray set-up as tests/test_ray.py (two CPUs, no dashboard), hence the ``slow`` mark.
"""

from __future__ import annotations

import numpy as np
import pytest

from sk_instructor import InstructorVectorizer

_WORDS = "dark matter energy loss parton chiral phase transition quick brown fox river".split()


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_embed_dataset_in_chunk_mode_equals_the_in_process_transform(local_ray, tiny_t5_path):
    from sk_instructor.ray import embed_dataset

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(_WORDS, size=rng.integers(3, 150))) for _ in range(20)]
    vectorizer = InstructorVectorizer(
        tiny_t5_path, domain="Science", long_text="chunk", chunk_overlap=8, cache=None
    )
    items = [{"id": i, "text": text} for i, text in enumerate(texts)]
    dataset = local_ray.data.from_items(items, override_num_blocks=3)

    rows = embed_dataset(dataset, vectorizer, "text", batch_size=6, concurrency=1).take_all()

    rows.sort(key=lambda row: row["id"])
    vectors = np.stack([np.asarray(row["embedding"], dtype=np.float32) for row in rows])
    expected = vectorizer.fit_transform(texts)
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    truncated = InstructorVectorizer(tiny_t5_path, domain="Science", cache=None)
    with pytest.warns(UserWarning, match="truncated"):
        assert not np.allclose(vectors, truncated.fit_transform(texts), atol=1e-3)
