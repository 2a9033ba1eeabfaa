"""The engine on the fast T5 forward: the published rules to 1e-5, bucketed batches, policy.

No GPU runs in CI, so the fast forward (the default on CUDA) is forced on the CPU here with the
private ``implementation="fast"`` of ``get_model``; the compiled path runs through inductor's
CPU backend. Speed is measured by ``benchmarks/gpu_check.sh``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_instructor import ReferenceInstructor

from sk_instructor._engine.batching import align_lengths, bucket_lengths
from sk_instructor._engine.checkpoint import resolve_model
from sk_instructor._engine.device import resolve_implementation
from sk_instructor._engine.model import EmbeddingModel
from sk_instructor._engine.registry import get_model
from sk_instructor._engine.t5_encoder import FastT5Encoder

# A truncated text (the tiny checkpoint keeps 64 tokens), a one-token instruction ("the"), no
# instruction, an empty text, unicode, stray whitespace.
CASES = [
    ("Represent the Science title: ", "3D ActionSLAM: wearable person tracking"),
    ("Represent the Wikipedia document for retrieval: ", "The river bank is near the station."),
    ("Represent the Medicine sentence for clustering: ", "  Patients monitor blood sugar.  "),
    ("the ", "A one-token instruction keeps every token in the pool."),
    ("", "No instruction at all."),
    ("Represent the Science title: ", "Ünïcödé — 東京 🚀 émojis and accents"),
    ("Represent the Science title: ", ""),
    ("Represent the Financial statement for classification: ", "word " * 200),
]
# 40 texts of 10 to ~50 tokens (the tiny checkpoint keeps 64).
TEXTS = [f"station {k} " + "river bank fox " * (k % 7) for k in range(40)]
INSTRUCTION = "Represent the sentence for retrieval: "


def _encode_quietly(model, instructions, texts, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation warnings: long texts are cut on purpose
        return model.encode(instructions, texts, **kwargs)


@pytest.fixture(scope="module", params=["bin", "safetensors"])
def checkpoint(request, tiny_t5_path, tiny_t5_safetensors_path):
    return tiny_t5_path if request.param == "bin" else tiny_t5_safetensors_path


def test_fast_engine_equals_the_rules_reference(checkpoint):
    reference = ReferenceInstructor(checkpoint)
    expected = np.stack([reference.embed(i, t) for i, t in CASES])
    model = get_model(checkpoint, device="cpu", implementation="fast")
    assert isinstance(model.transformer.encoder, FastT5Encoder)
    got = _encode_quietly(model, [i for i, _ in CASES], [t for _, t in CASES])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_fast_engine_equals_the_rules_reference_at_instructor_large_width(large_shaped_path):
    reference = ReferenceInstructor(large_shaped_path)
    expected = np.stack([reference.embed(i, t) for i, t in CASES])
    model = get_model(large_shaped_path, device="cpu", implementation="fast")
    got = _encode_quietly(model, [i for i, _ in CASES], [t for _, t in CASES])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_fast_engine_results_do_not_depend_on_batch_composition(tiny_t5_path):
    model = get_model(tiny_t5_path, device="cpu", implementation="fast")
    instructions = [INSTRUCTION] * len(TEXTS)
    baseline = model.encode(instructions, TEXTS, batch_size=1)
    for batch_size, budget in ((3, None), (None, 64), (None, 300), (None, 100_000)):
        got = model.encode(instructions, TEXTS, batch_size=batch_size, token_budget=budget)
        np.testing.assert_allclose(got, baseline, atol=1e-6)
    # And the fast forward agrees with transformers' on the same engine path.
    plain = get_model(tiny_t5_path, device="cpu", implementation="transformers")
    np.testing.assert_allclose(plain.encode(instructions, TEXTS), baseline, atol=1e-6)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_fast_batches_are_padded_to_aligned_or_bucketed_widths(tiny_t5_path, monkeypatch, compile):
    model = EmbeddingModel(
        resolve_model(tiny_t5_path), device="cpu", implementation="fast", compile=compile
    )
    # Eager: multiples of 8. Compiled (one graph per width): a few bucketed widths.
    expected = bucket_lengths if compile else align_lengths
    encoder = model.transformer.encoder
    seen = []

    def spy(ids, mask):  # records the batch, computes nothing (nothing is compiled)
        longest = int(mask.sum(dim=1).max()) if mask is not None else ids.shape[1]
        seen.append((tuple(ids.shape), longest))
        return torch.zeros(*ids.shape, encoder.embedding.shape[1])

    monkeypatch.setattr(encoder, "forward", spy)
    texts = [f"{k} " + "fox " * (3 * k) for k in range(1, 60)]  # ~10 to ~180 tokens
    model.encode([INSTRUCTION] * len(texts), texts, token_budget=1024, max_seq_length=256)
    assert seen
    for (rows, width), longest in seen:
        assert width == expected(longest), (width, longest)
        assert rows * width <= 1024 or rows == 1
    if compile:
        assert len({width for (_, width), _ in seen}) <= len(np.unique(expected(np.arange(257))))


def test_bucket_widths_are_few_and_bound_the_padding():
    lengths = np.arange(1, 513)
    widths = bucket_lengths(lengths)
    assert (widths >= lengths).all()
    assert (np.diff(widths) >= 0).all()
    assert (widths % 8 == 0).all()
    assert len(np.unique(widths)) == 20
    # At most one step of padding: 7 tokens up to 64, under a quarter of the length beyond.
    assert (widths - lengths < np.maximum(8, lengths / 4)).all()


def test_bfloat16_fast_path_stays_close_to_float32(tiny_t5_path):
    instructions = [INSTRUCTION] * len(TEXTS)
    high = get_model(tiny_t5_path, device="cpu", implementation="fast")
    low = get_model(tiny_t5_path, device="cpu", dtype="bfloat16", implementation="fast")
    assert low.dtype == torch.bfloat16
    a, b = high.encode(instructions, TEXTS), low.encode(instructions, TEXTS)
    assert b.dtype == np.float32
    assert (a * b).sum(axis=1).min() >= 0.9999  # unit vectors: the dot is the cosine


# -- pooling in the compute dtype ------------------------------------------------------------
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def _pooled_from_a_float32_copy(hidden, mask, modes):
    """Pooling as sentence-transformers' rules write it, on a float32 copy of the vectors
    (INSTRUCTOR's mode: the mean over the tokens the pooling mask keeps, counts clamped at
    1e-9)."""
    hidden = hidden.float()
    weights = mask.unsqueeze(-1).float()
    outputs = []
    for mode in modes:
        if mode == "cls":
            outputs.append(hidden[:, 0])
        elif mode == "max":
            outputs.append(hidden.masked_fill(weights == 0, -1e9).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            count = weights.sum(dim=1).clamp(min=1e-9)
            summed = (hidden * weights).sum(dim=1)
            outputs.append(summed / (count if mode == "mean" else count.sqrt()))
        elif mode == "weightedmean":
            position_weights = weights * torch.arange(1, hidden.shape[1] + 1).view(1, -1, 1)
            summed = (hidden * position_weights).sum(dim=1)
            outputs.append(summed / position_weights.sum(dim=1).clamp(min=1e-9))
        else:
            last = (mask.long() * torch.arange(hidden.shape[1])).argmax(dim=1)
            outputs.append(hidden[torch.arange(hidden.shape[0]), last])
    return torch.cat(outputs, dim=1)


def _pooling_batch():
    # 300 positions (weightedmean's weights pass 256, where bfloat16 stops being exact), an
    # instruction left out of each row, right padding, and a row whose every token is masked.
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([300, 250, 7, 1, 120, 4])
    skipped = torch.tensor([5, 0, 3, 0, 119, 4])
    positions = torch.arange(300)[None, :]
    mask = (positions < lengths[:, None]) & (positions >= skipped[:, None])
    return torch.randn(len(lengths), 300, 24, generator=generator) * 4, mask


def test_pooling_in_the_compute_dtype_equals_pooling_a_float32_copy():
    from sk_instructor._engine.stages.pooling import Pooling

    hidden, mask = _pooling_batch()
    pooling = Pooling(POOLING_MODES, hidden_size=24)

    def pooled(vectors):
        return pooling({"token_embeddings": vectors, "pooling_mask": mask})["sentence_embedding"]

    # float32: the same operations, the same numbers.
    assert torch.equal(pooled(hidden), _pooled_from_a_float32_copy(hidden, mask, POOLING_MODES))
    # bfloat16: float32 results, equal but for the order of the float32 additions.
    low = hidden.to(torch.bfloat16)
    got = pooled(low)
    assert got.dtype == torch.float32
    expected = _pooled_from_a_float32_copy(low, mask, POOLING_MODES)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # The row with no token kept: a finite vector, INSTRUCTOR's mean of nothing is 0.
    assert torch.isfinite(got[-1]).all()


def test_pooling_asks_for_no_float32_copy_of_the_token_vectors():
    from torch.utils._python_dispatch import TorchDispatchMode

    from sk_instructor._engine.stages.pooling import Pooling

    hidden, mask = _pooling_batch()
    low = hidden.to(torch.bfloat16)

    class Outputs(TorchDispatchMode):
        # Every tensor an operation returns: a float32 copy of the vectors would be one.
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for value in result if isinstance(result, tuple) else (result,):
                if isinstance(value, torch.Tensor):
                    self.seen.append((str(func), value.dtype, value.numel()))
            return result

    with Outputs() as outputs:
        Pooling(("mean",), hidden_size=24)({"token_embeddings": low, "pooling_mask": mask})
    float32 = [(name, size) for name, dtype, size in outputs.seen if dtype == torch.float32]
    assert float32 and all(size < low.numel() for _, size in float32), float32


# -- which forward runs ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "device", "unsupported", "compile", "expected"),
    [
        ("auto", "cuda", None, False, "fast"),
        ("auto", "cuda:1", None, False, "fast"),
        ("auto", "cpu", None, False, "transformers"),
        ("auto", "mps", None, False, "transformers"),
        ("auto", "cpu", None, True, "fast"),
        ("auto", "cuda", "model_type 'bert'", False, "transformers"),
        ("auto", "cuda", "model_type 'bert'", True, "transformers"),
        ("fast", "cpu", None, False, "fast"),
        ("transformers", "cuda", None, False, "transformers"),
    ],
)
def test_implementation_policy(requested, device, unsupported, compile, expected):
    got = resolve_implementation(requested, device=device, unsupported=unsupported, compile=compile)
    assert got == expected


@pytest.mark.parametrize(
    ("device", "dtype", "unsupported", "expected"),
    [
        # Measured faster than transformers' module in bfloat16 on a T5-base-shaped checkpoint
        # (benchmarks/cpu_runtimes.py; README, Speed on a CPU).
        ("cpu", torch.bfloat16, None, "fast"),
        ("cpu", "bfloat16", None, "fast"),
        ("cpu", torch.float32, None, "transformers"),
        ("mps", torch.bfloat16, None, "transformers"),
        ("cpu", torch.bfloat16, "model_type 'bert'", "transformers"),
    ],
)
def test_bfloat16_on_the_cpu_takes_the_fast_forward(device, dtype, unsupported, expected):
    got = resolve_implementation(
        "auto", device=device, unsupported=unsupported, compile=False, dtype=dtype
    )
    assert got == expected


def test_t5_bfloat16_on_the_cpu_loads_the_fast_forward_by_default(tiny_t5_path, minilm_path):
    assert get_model(tiny_t5_path, device="cpu", dtype="bfloat16").implementation == "fast"
    assert get_model(minilm_path, device="cpu", dtype="bfloat16").implementation == "transformers"


def test_forcing_the_fast_forward_where_it_does_not_apply_fails(minilm_path):
    with pytest.raises(ValueError, match="bert"):
        resolve_implementation("fast", device="cpu", unsupported="model_type 'bert'", compile=False)
    with pytest.raises(ValueError, match="fast encoder does not cover"):
        EmbeddingModel(resolve_model(minilm_path), device="cpu", implementation="fast")


def test_cpu_default_is_transformers_module(tiny_t5_path, minilm_path):
    assert get_model(tiny_t5_path, device="cpu").implementation == "transformers"
    assert get_model(minilm_path, device="cpu").implementation == "transformers"


def test_compile_on_an_uncovered_encoder_warns_and_runs_transformers(minilm_path):
    with pytest.warns(UserWarning, match="compile=True has no effect on this bert encoder"):
        model = EmbeddingModel(resolve_model(minilm_path), device="cpu", compile=True)
    assert model.implementation == "transformers"


def test_the_command_line_compile_option_reaches_the_engine():
    from sk_instructor._cli.main import _parameters, build_parser

    arguments = build_parser().parse_args(["embed", "in.csv", "-o", "out.npy", "--compile"])
    assert _parameters(arguments)["compile"] is True


def test_pickles_from_before_the_compile_parameter_unpickle_with_its_default():
    import pickle

    folder = Path(__file__).parent / "data"
    with open(folder / "vectorizer-0.1.0.pkl", "rb") as file:
        vectorizer = pickle.load(file)
    assert vectorizer.get_params()["compile"] is False


# -- compiled ----------------------------------------------------------------------------------
# Two padded widths (bucket_lengths of 11-12 and 26-27 tokens: 16 and 32), 20 texts of each: under a
# budget of 256 tokens, each width runs in batches of more than one row count.
COMPILED_TEXTS = [f"row {k} " + "fox river " * (3 * (k % 2)) for k in range(40)]


@pytest.fixture(scope="module")
def compiled_run(tiny_t5_path, tmp_path_factory):
    """The compiled path, run once in this process into an inductor cache of its own.

    Each graph costs seconds of compiling on a CPU, so the two compiled tests share one run:
    the first checks what it compiled and computed, the second starts another process on the
    cache it filled.
    """
    from torch._dynamo.utils import counters

    cache_dir = tmp_path_factory.mktemp("inductor")
    compiled = get_model(tiny_t5_path, device="cpu", compile=True)
    encoder = compiled.transformer.encoder
    shapes, forward = [], encoder.forward

    def recording(input_ids, *args, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return forward(input_ids, *args, **kwargs)

    instructions = [INSTRUCTION] * len(COMPILED_TEXTS)
    graphs_before = counters["stats"]["unique_graphs"]
    misses_before = counters["inductor"]["fxgraph_cache_miss"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
        patch.setattr(encoder, "forward", recording)
        got = _encode_quietly(compiled, instructions, COMPILED_TEXTS, token_budget=256)
        batch_shapes = list(shapes)
        graphs = counters["stats"]["unique_graphs"] - graphs_before
        single = compiled.encode([INSTRUCTION], [COMPILED_TEXTS[5]], cache=None)
        graphs_with_single = counters["stats"]["unique_graphs"] - graphs_before
    eager = get_model(tiny_t5_path, device="cpu", implementation="fast")
    return {
        "model": compiled,
        "cache_dir": cache_dir,
        "got": got,
        "eager": _encode_quietly(eager, instructions, COMPILED_TEXTS),
        "lengths": compiled._tokenizer.tokenize(instructions, COMPILED_TEXTS, 64).lengths,
        "batch_shapes": batch_shapes,
        "graphs": graphs,
        "single": single,
        "graphs_with_single": graphs_with_single,
        "fxgraph_cache_misses": counters["inductor"]["fxgraph_cache_miss"] - misses_before,
    }


@pytest.mark.slow
def test_compiled_path_equals_eager(compiled_run):
    run = compiled_run
    assert run["model"].implementation == "fast" and run["model"].transformer.encoder.compiled
    np.testing.assert_allclose(run["got"], run["eager"], atol=1e-5)
    n_widths = len(np.unique(bucket_lengths(run["lengths"])))
    # What the texts are for: more batch shapes than widths.
    assert n_widths == 2 and len(set(run["batch_shapes"])) > n_widths, run["batch_shapes"]
    # Compiled once per width (rows per batch are a dynamic dimension, single rows run as two),
    # not once per batch shape.
    assert 1 <= run["graphs"] <= n_widths
    assert run["graphs_with_single"] == run["graphs"]
    np.testing.assert_allclose(run["single"], run["got"][5:6], atol=1e-5)


_SECOND_PROCESS = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from torch._dynamo.utils import counters
    from sk_instructor._engine.registry import get_model
    model = get_model(sys.argv[1], device="cpu", compile=True)
    texts = json.loads(sys.argv[3])
    model.encode([sys.argv[2]] * len(texts), texts)
    print(json.dumps(dict(counters["inductor"])))
    """
)


@pytest.mark.slow
def test_a_second_process_reuses_the_compiled_code(compiled_run, tiny_t5_path):
    # This process compiled into an empty cache (compiled_run); another one, on that cache and
    # on texts of the widths compiled there, compiles nothing again.
    assert compiled_run["fxgraph_cache_misses"] >= 1
    environment = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(compiled_run["cache_dir"]),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path]),
    }
    arguments = [str(tiny_t5_path), INSTRUCTION, json.dumps(COMPILED_TEXTS[:3])]
    result = subprocess.run(
        [sys.executable, "-c", _SECOND_PROCESS, *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    second = json.loads(result.stdout.strip().splitlines()[-1])
    assert second.get("fxgraph_cache_hit", 0) >= 1
    assert second.get("fxgraph_cache_miss", 0) == 0
