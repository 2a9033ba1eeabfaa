"""``backend="openvino"``: the encoder body run by OpenVINO on the CPU, everything else ours.

Fidelity is checked against torch float32 computed independently (a fresh torch model), on
the tiny T5 fixture and the real all-MiniLM-L6-v2; speed is measured by
``benchmarks/cpu_runtimes.py``, never here.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import InvalidParameterError
from test_cpu_modes import REVIEW_INSTRUCTION, _min_cosine, _real_texts

from sk_instructor import InstructorRetriever, InstructorVectorizer, MemoryCache
from sk_instructor._cache.keys import KeySettings, make_key
from sk_instructor._cli.main import build_parser
from sk_instructor._engine.checkpoint import resolve_model
from sk_instructor._engine.cpu_streams import STREAMS_ENV, StreamLayout
from sk_instructor._engine.device import NUM_THREADS_ENV
from sk_instructor._engine.model import EmbeddingModel
from sk_instructor._engine.registry import get_model

# float32 through OpenVINO against torch float32, max abs difference of unit vectors. Measured
# (torch 2.13, openvino 2026.4, 1 thread, the 400 real texts of test_cpu_modes): MiniLM
# 2.6e-7, tiny T5 1.3e-7; torch against itself with another batch composition (batch_size=1)
# moves the same vectors by 1.8e-7. So OpenVINO float32 is within torch's own float noise; the
# bound is the suite's parity tolerance for float32 (1e-5, instructor-numerics.md), which
# leaves room for other CPUs' kernels (AVX2 against AVX-512 sum in another order).
FLOAT32_TOLERANCE = 1e-5
# bfloat16 through OpenVINO, min cosine to torch float32 on the same 400 texts: measured MiniLM
# 0.99988 (mean 0.99998), tiny T5 0.99998. The bound is the brief's 0.999 for this mode: under
# the measured value by ten times its distance to 1, for other texts and CPUs (on the
# benchmark's 600 snippets MiniLM measured 0.99996).
BFLOAT16_MIN_COSINE = 0.999

TEXTS = [
    "Parton energy loss in QCD matter",
    "Dark matter halos and the rotation curves of galaxies",
    "The stock market fell sharply after the announcement of new tariffs.",
    "Patients with diabetes should monitor their blood sugar",
    "Where is the nearest train station?",
    "A quick brown fox jumps over the lazy dog near the river bank.",
]
LABELS = [0, 0, 1, 1, 0, 1]


def _torch_float32(path) -> np.ndarray:
    texts = _real_texts()
    model = EmbeddingModel(
        resolve_model(str(path)), device="cpu", dtype="float32", implementation="transformers"
    )
    return model.encode([REVIEW_INSTRUCTION] * len(texts), texts, cache=None)


def _openvino(path, dtype: str) -> np.ndarray:
    texts = _real_texts()
    return InstructorVectorizer(
        path,
        instruction=REVIEW_INSTRUCTION,
        device="cpu",
        dtype=dtype,
        backend="openvino",
        cache=None,
    ).fit_transform(texts)


@pytest.fixture(scope="module")
def minilm_torch_float32(minilm_path) -> np.ndarray:
    return _torch_float32(minilm_path)


# -- fidelity ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_minilm_float32_is_within_float_noise_of_torch(minilm_path, minilm_torch_float32, dtype):
    vectors = _openvino(minilm_path, dtype)
    assert vectors.dtype == np.float32
    assert np.abs(vectors - minilm_torch_float32).max() <= FLOAT32_TOLERANCE


@pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")  # the tiny T5 reads 64 tokens
def test_t5_float32_is_within_float_noise_of_torch(tiny_t5_path):
    expected = _torch_float32(tiny_t5_path)
    assert np.abs(_openvino(tiny_t5_path, "float32") - expected).max() <= FLOAT32_TOLERANCE


def test_minilm_bfloat16_keeps_its_stated_cosine_to_float32(minilm_path, minilm_torch_float32):
    vectors = _openvino(minilm_path, "bfloat16")
    assert vectors.dtype == np.float32
    cosine = _min_cosine(vectors, minilm_torch_float32)
    assert cosine >= BFLOAT16_MIN_COSINE, cosine
    # Reduced, not the same numbers: OpenVINO really computes in bfloat16.
    assert np.abs(vectors - minilm_torch_float32).max() > 1e-4


@pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")
def test_t5_bfloat16_keeps_its_stated_cosine_to_float32(tiny_t5_path):
    expected = _torch_float32(tiny_t5_path)
    cosine = _min_cosine(_openvino(tiny_t5_path, "bfloat16"), expected)
    assert cosine >= BFLOAT16_MIN_COSINE, cosine


def test_only_the_encoder_body_moves_the_rest_stays_ours(tiny_t5_path):
    model = get_model(tiny_t5_path, device="cpu", dtype="bfloat16", backend="openvino")
    assert model.backend == "openvino" and model.dtype_name == "bfloat16"
    # The torch side (pooling with the instruction mask, Dense, Normalize) runs in float32 on
    # OpenVINO's float32 hidden states; the precision hint is OpenVINO's.
    assert model.dtype == torch.float32 and model.transformer.encoder.precision == "bf16"
    assert model.implementation == "transformers"


def test_an_unpadded_batch_and_a_padded_one_agree(minilm_path):
    # The engine passes no mask for a batch without padding; the backend must then see one of
    # ones, not an empty or stale one.
    model = get_model(minilm_path, device="cpu", backend="openvino")
    one = model.encode([REVIEW_INSTRUCTION], [TEXTS[0]], cache=None)
    mixed = model.encode([REVIEW_INSTRUCTION] * len(TEXTS), TEXTS, cache=None, batch_size=64)
    np.testing.assert_allclose(one[0], mixed[0], atol=FLOAT32_TOLERANCE)


# -- threads -----------------------------------------------------------------------------------
def test_threads_follow_torch_and_the_environment_variable(tiny_t5_path, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(NUM_THREADS_ENV, "1")
    try:
        model = get_model(tiny_t5_path, device="cpu", backend="openvino")
        model.encode([REVIEW_INSTRUCTION], [TEXTS[0]], cache=None)
        compiled = model.transformer.encoder._compiled
        assert set(compiled) == {StreamLayout(streams=1, threads=1)}
        assert compiled[StreamLayout(1, 1)].get_property("INFERENCE_NUM_THREADS") == 1
    finally:
        torch.set_num_threads(before)


def test_the_engine_streams_share_one_compiled_model_with_an_openvino_stream_each(
    tiny_t5_path, monkeypatch
):
    # On the CPU the engine runs batches side by side (cpu_streams); OpenVINO must run their
    # requests at once too, on weights compiled once, with the vectors of one stream.
    monkeypatch.delenv(NUM_THREADS_ENV, raising=False)
    monkeypatch.delenv(STREAMS_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    texts = list(dict.fromkeys(" ".join(text.split()[:6]) for text in _real_texts()))[:60]
    instructions = [REVIEW_INSTRUCTION] * len(texts)
    try:
        model = get_model(tiny_t5_path, device="cpu", backend="openvino")
        streamed = model.encode(instructions, texts, cache=None, token_budget=256)
        monkeypatch.setenv(STREAMS_ENV, "1")
        one_stream = model.encode(instructions, texts, cache=None, token_budget=256)
        compiled = model.transformer.encoder._compiled
        assert StreamLayout(streams=1, threads=2) in compiled
        shared = compiled[StreamLayout(streams=2, threads=1)]
        assert int(shared.get_property("NUM_STREAMS")) == 2
        assert int(shared.get_property("INFERENCE_NUM_THREADS")) == 2
    finally:
        torch.set_num_threads(before)
    np.testing.assert_allclose(streamed, one_stream, atol=FLOAT32_TOLERANCE, rtol=0)


# -- cache keys --------------------------------------------------------------------------------
KEY_FIELDS = {
    "model_fingerprint": "hub:org/model@" + "0" * 40,
    "instruction": "Represent the sentence: ",
    "max_seq_length": 512,
    "dtype": "float32",
    "normalize": True,
    "pooling": "mean",
    "text": "hello",
}


def test_the_cache_key_includes_the_backend_and_torch_keys_are_unchanged():
    # The key of sk_instructor 0.1.0 for KEY_FIELDS (before backends existed): caches written
    # then keep answering the torch backend.
    assert make_key(**KEY_FIELDS) == make_key(**KEY_FIELDS, backend="torch")
    assert make_key(**KEY_FIELDS, backend="openvino") != make_key(**KEY_FIELDS)
    settings = {
        name: KEY_FIELDS[name] for name in KEY_FIELDS if name not in ("instruction", "text")
    }
    pairs = [(KEY_FIELDS["instruction"], KEY_FIELDS["text"])]
    assert KeySettings(**settings).keys(pairs) == [make_key(**KEY_FIELDS)]
    assert KeySettings(**settings, backend="openvino").keys(pairs) != KeySettings(**settings).keys(
        pairs
    )


def test_vectors_of_one_backend_are_never_served_for_another(tiny_t5_path):
    cache = MemoryCache()
    common = {"instruction": REVIEW_INSTRUCTION, "device": "cpu", "cache": cache}
    InstructorVectorizer(tiny_t5_path, **common).fit_transform(TEXTS)
    assert cache.stats().encoded == len(TEXTS)
    InstructorVectorizer(tiny_t5_path, backend="openvino", **common).fit_transform(TEXTS)
    # Encoded again, not read from torch's entries; then read from its own.
    assert cache.stats().encoded == 2 * len(TEXTS)
    InstructorVectorizer(tiny_t5_path, backend="openvino", **common).fit_transform(TEXTS)
    assert cache.stats().encoded == 2 * len(TEXTS)


# -- clear errors ------------------------------------------------------------------------------
def test_without_openvino_installed_the_error_says_how_to_install(tiny_t5_path, monkeypatch):
    # A None entry makes both `import openvino` and importlib's find_spec fail, as an
    # environment without the package does.
    monkeypatch.setitem(sys.modules, "openvino", None)
    vectorizer = InstructorVectorizer(tiny_t5_path, backend="openvino", cache=None)
    with pytest.raises(ImportError, match=r'pip install "sk-instructor\[openvino\]"'):
        vectorizer.fit_transform(TEXTS)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"device": "cuda"}, r"backend='openvino' runs on the CPU; device='cuda'"),
        ({"device": "mps"}, r"backend='openvino' runs on the CPU; device='mps'"),
        ({"compile": True}, r"compile=True .* backend='openvino'"),
        ({"dtype": "float16"}, r"backend='openvino' runs in float32 or bfloat16; dtype="),
    ],
)
def test_settings_it_cannot_run_with_are_refused_naming_the_parameter(
    tiny_t5_path, settings, message
):
    vectorizer = InstructorVectorizer(tiny_t5_path, backend="openvino", cache=None, **settings)
    with pytest.raises(ValueError, match=message):
        vectorizer.fit(TEXTS)


def test_device_auto_means_the_cpu(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, backend="openvino", cache=None).fit(TEXTS)
    assert vectorizer.device_ == "cpu"


def test_an_unknown_backend_is_refused_by_the_parameter_check(tiny_t5_path):
    with pytest.raises(InvalidParameterError, match="backend"):
        InstructorVectorizer(tiny_t5_path, backend="onnx").fit(TEXTS)


# -- scikit-learn ------------------------------------------------------------------------------
def test_get_params_clone_and_pickle_keep_the_backend(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, backend="openvino", cache=None)
    assert vectorizer.get_params()["backend"] == "openvino"
    assert clone(vectorizer).backend == "openvino"
    assert InstructorVectorizer(tiny_t5_path).backend == "torch"
    assert InstructorRetriever(tiny_t5_path).get_params()["backend"] == "torch"
    fitted = vectorizer.fit(TEXTS)
    restored = pickle.loads(pickle.dumps(fitted))
    assert restored.backend == "openvino"
    np.testing.assert_allclose(restored.transform(TEXTS), fitted.transform(TEXTS), atol=1e-6)


def test_a_pickle_without_the_parameter_loads_as_the_torch_backend(tiny_t5_path):
    # What a vectorizer pickled before the parameter existed holds (tests/test_compatibility.py
    # loads the real 0.1.0 pickles).
    vectorizer = InstructorVectorizer(tiny_t5_path, cache=None)
    state = vectorizer.__getstate__()
    del state["backend"]
    restored = InstructorVectorizer.__new__(InstructorVectorizer)
    restored.__setstate__(state)
    assert restored.backend == "torch"


def test_grid_search_searches_the_backend(tiny_t5_path):
    pipeline = Pipeline(
        [
            ("vectorizer", InstructorVectorizer(tiny_t5_path, instruction=REVIEW_INSTRUCTION)),
            ("classifier", LogisticRegression()),
        ]
    )
    search = GridSearchCV(
        pipeline,
        {"vectorizer__backend": ["torch", "openvino"]},
        cv=KFold(2),
        n_jobs=1,
        error_score="raise",
    )
    search.fit(TEXTS, LABELS)
    assert [params["vectorizer__backend"] for params in search.cv_results_["params"]] == [
        "torch",
        "openvino",
    ]
    # Float noise apart, both backends compute the same vectors: the same scores.
    scores = search.cv_results_["mean_test_score"]
    assert scores[0] == pytest.approx(scores[1])


@pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")
def test_the_command_line_embeds_with_openvino(tmp_path, tiny_t5_path):
    from test_cli import INSTRUCTION, embed_args, make_rows, read_parquet_output, write_input

    from sk_instructor._cli import main

    ids, texts = make_rows(12)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.parquet"
    arguments = embed_args(input_path, output, tiny_t5_path, "--backend", "openvino")
    assert main([*arguments, "--id-column", "id", "--cache", "none"]) == 0
    _, vectors = read_parquet_output(output)
    expected = InstructorVectorizer(tiny_t5_path, instruction=INSTRUCTION, cache=None)
    np.testing.assert_allclose(
        vectors, expected.fit_transform(texts), rtol=0, atol=FLOAT32_TOLERANCE
    )


def test_the_command_line_option_reaches_the_vectorizer():
    arguments = build_parser().parse_args(
        ["embed", "in.csv", "-o", "out.npy", "--backend", "openvino"]
    )
    assert arguments.backend == "openvino"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "in.csv", "-o", "out.npy", "--backend", "onnx"])


@pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")
def test_the_fine_tuner_embeds_its_tuned_weights_with_openvino(tiny_t5_path, tmp_path):
    from sk_instructor import InstructorFineTuner

    tuner = InstructorFineTuner(
        tiny_t5_path,
        instruction="Represent the title: ",
        backend="openvino",
        random_state=0,
        pairs_per_text=2,
        output_dir=tmp_path / "tuned",
        cache=None,
    ).fit(TEXTS, LABELS)
    assert tuner.device_ == "cpu"
    tuned_torch = InstructorVectorizer(
        tuner.model_path_, instruction="Represent the title: ", cache=None
    ).fit_transform(TEXTS)
    np.testing.assert_allclose(tuner.transform(TEXTS), tuned_torch, atol=FLOAT32_TOLERANCE)
