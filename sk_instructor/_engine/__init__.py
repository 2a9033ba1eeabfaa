"""The encoding engine: everything that touches torch and transformers lives in this package.

``registry.get_model`` hands out one loaded :class:`~.model.EmbeddingModel` per checkpoint and
device per process; the estimators, the command line and Ray all encode through it. Modules
here import torch at their top, so the rest of the package imports them only when a model is
needed (``import sk_instructor`` stays light). This ``__init__`` imports nothing for the same
reason: ``checkpoint`` (locating and reading a checkpoint's files) is usable without torch.
"""
