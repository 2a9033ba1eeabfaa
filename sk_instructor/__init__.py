"""sk_instructor: INSTRUCTOR instruction-following text embeddings for scikit-learn.

Importing the package is cheap: torch and transformers load only when a model is first used.
"""

from ._exceptions import CheckpointError, ModelNotFoundError
from ._instruction import InstructionTemplate
from ._vectorizer import InstructorVectorizer

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "InstructionTemplate",
    "InstructorVectorizer",
    "ModelNotFoundError",
    "__version__",
]
