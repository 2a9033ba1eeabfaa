"""Reliability promises: shared models under threads, safe persistence formats."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sk_instructor import InstructorVectorizer

TEXTS = [f"sentence {k}: " + "alpha beta gamma " * (k % 6) for k in range(60)]


def test_transform_from_several_threads_equals_serial_calls(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, device="cpu", cache=None).fit(TEXTS)
    serial = [vectorizer.transform(TEXTS[k::4]) for k in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        # Each thread runs several transforms on the one shared model and tokenizer.
        futures = [pool.submit(vectorizer.transform, TEXTS[k % 4 :: 4]) for k in range(12)]
        results = [future.result() for future in futures]
    for k, result in enumerate(results):
        np.testing.assert_allclose(result, serial[k % 4], atol=1e-6)


def test_threads_with_different_instructions_do_not_mix(tiny_t5_path):
    first = InstructorVectorizer(
        tiny_t5_path, device="cpu", cache=None, instruction="Represent the Science title: "
    ).fit(TEXTS)
    second = InstructorVectorizer(
        tiny_t5_path, device="cpu", cache=None, instruction="Represent the Financial statement: "
    ).fit(TEXTS)
    expected = {id(first): first.transform(TEXTS), id(second): second.transform(TEXTS)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [(v, pool.submit(v.transform, TEXTS)) for v in (first, second) * 3]
        for vectorizer, future in jobs:
            np.testing.assert_allclose(future.result(), expected[id(vectorizer)], atol=1e-6)


def test_skops_round_trip_with_documented_trusted_types(tiny_t5_path, tmp_path):
    import skops.io as sio

    # A hub id or folder given as a string (a pathlib.Path model adds "pathlib.PosixPath").
    vectorizer = InstructorVectorizer(str(tiny_t5_path), device="cpu", domain="Science")
    vectorizer.fit(TEXTS)
    path = tmp_path / "vectorizer.skops"
    sio.dump(vectorizer, path)
    # The only type skops does not trust by default is the vectorizer class itself (the README's
    # reliability section documents this): no weights, no arbitrary objects are stored.
    assert sio.get_untrusted_types(file=path) == ["sk_instructor._vectorizer.InstructorVectorizer"]
    loaded = sio.load(path, trusted=["sk_instructor._vectorizer.InstructorVectorizer"])
    np.testing.assert_array_equal(loaded.transform(TEXTS), vectorizer.transform(TEXTS))
    assert path.stat().st_size < 100_000
