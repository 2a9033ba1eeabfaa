"""A process whose every vector is in the disk cache answers without loading the model.

The test process embeds and fills the cache (its model is loaded already); a fresh interpreter
then asks for the same vectors and must get them, equal, without importing torch or
transformers (the time that saves is measured by benchmarks/warm_start.py, not here). Only the
process under test is started: each one that imports torch costs seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sk_instructor import DiskCache, InstructorVectorizer

TEXTS = [f"text number {k} about the river bank and the station" for k in range(40)]

_PROCESS = """
import json, sys
import numpy as np
from sk_instructor import DiskCache, InstructorVectorizer
model, cache_path, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
options = json.loads(sys.argv[4])
cache = DiskCache(cache_path)
before = cache.stats()
vectors = InstructorVectorizer(model, cache=cache, **options).fit_transform(texts)
after = cache.stats()
print(json.dumps({
    "vectors": vectors.tolist(),
    "loaded": sorted(name for name in ("torch", "transformers") if name in sys.modules),
    "hits": after.hits - before.hits,
    "encoded": after.encoded - before.encoded,
}))
"""


def _process(model, cache_path, texts, **options) -> dict:
    arguments = [str(model), str(cache_path), json.dumps(texts), json.dumps(options)]
    result = subprocess.run(
        [sys.executable, "-c", _PROCESS, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _fill(model, cache_path, texts, **options) -> np.ndarray:
    """Embed ``texts`` here into a disk cache at ``cache_path``, then close it, as a process
    that filled the cache and ended would."""
    cache = DiskCache(cache_path)
    try:
        vectors = InstructorVectorizer(model, cache=cache, **options).fit_transform(texts)
        assert cache.stats().encoded == len(texts)
    finally:
        cache.close()
    return vectors


@pytest.mark.parametrize("options", [{}, {"instruction": "", "normalize": False}])
def test_a_second_process_answers_from_the_cache_without_loading_the_model(
    tiny_t5_path, tmp_path, options
):
    first = _fill(tiny_t5_path, tmp_path / "cache", TEXTS, **options)
    second = _process(tiny_t5_path, tmp_path / "cache", TEXTS, **options)
    assert second["loaded"] == [] and second["encoded"] == 0 and second["hits"] == len(TEXTS)
    np.testing.assert_array_equal(np.array(second["vectors"], dtype=np.float32), first)
    fresh = InstructorVectorizer(tiny_t5_path, cache=None, **options).fit_transform(TEXTS)
    np.testing.assert_allclose(np.array(second["vectors"]), fresh, atol=1e-6)


def test_one_text_missing_from_the_cache_loads_the_model_for_that_text_only(tiny_t5_path, tmp_path):
    _fill(tiny_t5_path, tmp_path / "cache", TEXTS[:-1])
    second = _process(tiny_t5_path, tmp_path / "cache", TEXTS)
    assert "torch" in second["loaded"]
    assert (second["hits"], second["encoded"]) == (len(TEXTS) - 1, 1)  # one lookup, not two


def test_weights_changed_since_the_cache_was_filled_are_not_answered_from_it(tmp_path):
    from checkpoints import build_t5_checkpoint

    folder = build_t5_checkpoint(tmp_path / "model", seed=0)
    _fill(folder, tmp_path / "cache", TEXTS)
    build_t5_checkpoint(folder, seed=1)  # saved over: another fingerprint, no hit
    second = _process(folder, tmp_path / "cache", TEXTS)
    assert second["hits"] == 0 and second["encoded"] == len(TEXTS)
    fresh = InstructorVectorizer(folder, cache=None).fit_transform(TEXTS)
    np.testing.assert_allclose(np.array(second["vectors"]), fresh, atol=1e-6)
