"""sk_instructor: INSTRUCTOR instruction-following text embeddings for scikit-learn.

Public API
----------
InstructorVectorizer
    Texts to embeddings under a task instruction; a scikit-learn transformer.
InstructorFineTuner
    The vectorizer, its encoder first fine-tuned on the labels of ``fit`` (SetFit-style).
InstructorRetriever
    Asymmetric retrieval: documents and queries embedded under their own instructions.
pair_similarity
    Cosine similarity of two aligned text lists (STS-style work).
InstructionTemplate, InstructionPair
    The paper's instruction presets for each task family; a query/document pair.
MemoryCache, DiskCache, default_memory_cache, CacheStats, EmbeddingCache
    The embedding cache that makes repeated fits and grid searches cheap.
CheckpointError, ModelNotFoundError
    Raised for unusable or unavailable checkpoints.

Submodules: :mod:`sk_instructor.metrics` (ranking metrics and scorers),
:mod:`sk_instructor.datasets` (offline example data), :mod:`sk_instructor.ray` (Ray Data).

Importing the package is cheap: each name is imported on first use, and torch and transformers
only when a model is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name and the module that defines it. They are imported on first use (PEP 562),
# so that ``import sk_instructor`` and the command line's first step, its SIGTERM handler, do
# not wait seconds for scikit-learn and numpy.
_PUBLIC = {
    "CacheStats": "._cache",
    "CheckpointError": "._exceptions",
    "DiskCache": "._cache",
    "EmbeddingCache": "._cache",
    "InstructionPair": "._instruction",
    "InstructionTemplate": "._instruction",
    "InstructorFineTuner": "._finetune",
    "InstructorRetriever": "._retrieval",
    "InstructorVectorizer": "._vectorizer",
    "MemoryCache": "._cache",
    "ModelNotFoundError": "._exceptions",
    "default_memory_cache": "._cache",
    "pair_similarity": "._similarity",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'sk_instructor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from ._cache import CacheStats as CacheStats
    from ._cache import DiskCache as DiskCache
    from ._cache import EmbeddingCache as EmbeddingCache
    from ._cache import MemoryCache as MemoryCache
    from ._cache import default_memory_cache as default_memory_cache
    from ._exceptions import CheckpointError as CheckpointError
    from ._exceptions import ModelNotFoundError as ModelNotFoundError
    from ._finetune import InstructorFineTuner as InstructorFineTuner
    from ._instruction import InstructionPair as InstructionPair
    from ._instruction import InstructionTemplate as InstructionTemplate
    from ._retrieval import InstructorRetriever as InstructorRetriever
    from ._similarity import pair_similarity as pair_similarity
    from ._vectorizer import InstructorVectorizer as InstructorVectorizer
