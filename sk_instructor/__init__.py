"""sk_instructor: INSTRUCTOR instruction-following text embeddings for scikit-learn.

Public API
----------
InstructorVectorizer
    Texts to embeddings under a task instruction; a scikit-learn transformer.
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

Importing the package is cheap: torch and transformers load only when a model is first used.
"""

from ._cache import CacheStats, DiskCache, EmbeddingCache, MemoryCache, default_memory_cache
from ._exceptions import CheckpointError, ModelNotFoundError
from ._instruction import InstructionPair, InstructionTemplate
from ._retrieval import InstructorRetriever
from ._similarity import pair_similarity
from ._vectorizer import InstructorVectorizer

__version__ = "0.1.0"

__all__ = [
    "CacheStats",
    "CheckpointError",
    "DiskCache",
    "EmbeddingCache",
    "InstructionPair",
    "InstructionTemplate",
    "InstructorRetriever",
    "InstructorVectorizer",
    "MemoryCache",
    "ModelNotFoundError",
    "__version__",
    "default_memory_cache",
    "pair_similarity",
]
