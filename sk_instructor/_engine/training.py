"""The training loop of fine-tuning: pairs of labelled texts, a contrastive loss, the weights
saved in the sentence-transformers layout.

SetFit's recipe (Tunstall et al., 2022) on INSTRUCTOR's reading of a text: each text is paired
with texts of its own class (label 1) and of other classes (label 0), and the encoder and its
Dense stages learn to put the first close and the second apart under a cosine loss. Every text
goes through the very stages inference uses (:mod:`.stages`): the encoder reads
``instruction + text`` tokenized by :mod:`.tokenization`, and the Pooling stage leaves the
instruction's tokens out through the same pooling mask as :meth:`.model.EmbeddingModel._forward`
builds. What the weights learn is therefore exactly what the engine reads back.

Training runs in float32 on the CPU. On CUDA the forward runs under bfloat16 autocast, the
weights and the optimizer state staying float32 (see :func:`.fine_tuning.training_precision`).
Callers go through :func:`.fine_tuning.fine_tune`, which decides the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.nn.utils import clip_grad_norm_

from .._progress import in_notebook
from .checkpoint import read_stages
from .fine_tuning import TrainingSettings
from .padded_batch import padded_batch
from .stages import LoadSettings, load_stages
from .stages.dense import Dense
from .stages.normalize import Normalize
from .stages.pooling import Pooling
from .stages.transformer import Transformer
from .tokenization import TokenizedTexts, Tokenizer

__all__ = ["TrainableModel", "TrainingRun", "sample_pairs", "save_checkpoint", "train_and_save"]

# The share of the steps over which the learning rate rises linearly to its peak.
_WARMUP_SHARE = 0.1
_WEIGHT_DECAY = 0.01
_MAX_GRAD_NORM = 1.0
# sentence-transformers' ContrastiveLoss margin, on the cosine distance.
_CONTRASTIVE_MARGIN = 0.5
# Files of a checkpoint that hold weights (written anew) or another framework's export (not
# copied: they would describe the base weights, not the tuned ones).
_WEIGHT_SUFFIXES = (".bin", ".safetensors", ".h5", ".msgpack", ".ot", ".onnx", ".pt", ".pth")
_EXPORT_FOLDERS = ("onnx", "openvino", "coreml")


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What one training did: pairs seen, optimisation steps, mean loss of each epoch."""

    n_pairs: int
    n_steps: int
    epoch_losses: tuple[float, ...]


class TrainableModel:
    """A checkpoint's stages loaded for training: encoder, Pooling and Dense stages, float32.

    The stages are the engine's own (:mod:`.stages`), loaded through the same safe readers;
    the encoder is transformers' module (never the inference-only fast forward), so it has
    dropout and gradients. A Normalize stage is left out: the losses compare directions.
    """

    def __init__(self, folder: Path, device: str) -> None:
        settings = LoadSettings(device=device, dtype="float32", implementation="transformers")
        self.folder = folder
        self.device = device
        self.specs = read_stages(folder)
        stages, _ = load_stages(self.specs, settings)
        self.transformer: Transformer = stages[0]
        # Normalize is left out (see above).
        trained = [
            (spec, stage)
            for spec, stage in zip(self.specs[1:], stages[1:], strict=True)
            if not isinstance(stage, Normalize)
        ]
        self.later: list[Pooling | Dense] = [stage for _, stage in trained]
        self.dense_folders = [spec.folder for spec, stage in trained if isinstance(stage, Dense)]
        self.encoder: torch.nn.Module = self.transformer.encoder
        self.dense: list[Dense] = [stage for stage in self.later if isinstance(stage, Dense)]

    @property
    def tokenizer(self) -> Tokenizer:
        return self.transformer.tokenizer

    def modules(self) -> list[torch.nn.Module]:
        """Every trained module: the encoder and each Dense stage's linear layer."""
        return [self.encoder, *(stage.linear for stage in self.dense)]

    def train(self, mode: bool = True) -> None:
        for module in self.modules():
            module.train(mode)

    def embed(self, input_ids: list[list[int]], instruction_lengths: np.ndarray) -> torch.Tensor:
        """Sentence vectors (before any normalisation) of tokenized rows, with gradients.

        The batch is laid out as the engine lays out an inference batch: right padding, the
        encoder seeing every token, the pooling mask leaving the first
        ``instruction_lengths[i]`` tokens of row ``i`` out.
        """
        features = padded_batch(
            input_ids,
            instruction_lengths,
            pad_token_id=self.tokenizer.pad_token_id,
            to_device=lambda tensor: tensor.to(self.device),
        )
        features = self.transformer(features)
        for stage in self.later:
            features = stage(features)
        return features["sentence_embedding"].float()


def sample_pairs(
    codes: np.ndarray, pairs_per_text: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of text indices and their labels (1.0: same class, 0.0: different classes).

    Each text gets ``pairs_per_text`` pairs, alternately a positive one (another text of its
    class) and a negative one (a text of another class, the class drawn uniformly so that small
    classes are not drowned out); the first text starts with a positive pair, the next with a
    negative one, and so on, so that the two kinds stay balanced whatever the count.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_instructor._engine.training import sample_pairs
    >>> first, second, labels = sample_pairs(np.array([0, 0, 1, 1]), 2, np.random.default_rng(0))
    >>> len(first), labels.tolist()
    (8, [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    """
    codes = np.asarray(codes)
    classes = np.unique(codes)
    members = {code: np.flatnonzero(codes == code) for code in classes}
    first, second, labels = [], [], []
    for index, code in enumerate(codes):
        same = members[code]
        others = classes[classes != code]
        for draw in range(pairs_per_text):
            if (index + draw) % 2 == 0:
                partner = _other_member(same, index, rng)
                labels.append(1.0)
            else:
                other = others[rng.integers(len(others))]
                partner = members[other][rng.integers(len(members[other]))]
                labels.append(0.0)
            first.append(index)
            second.append(int(partner))
    return np.asarray(first), np.asarray(second), np.asarray(labels, dtype=np.float32)


def _other_member(same: np.ndarray, index: int, rng: np.random.Generator) -> int:
    """A member of ``same`` other than ``index``, uniformly."""
    position = int(np.searchsorted(same, index))
    drawn = int(rng.integers(len(same) - 1))
    return int(same[drawn + (drawn >= position)])


def _loss(first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor, kind: str):
    similarity = F.cosine_similarity(first, second, dim=1)
    if kind == "cosine":
        return F.mse_loss(similarity, labels)
    distance = 1.0 - similarity
    return (
        0.5
        * (
            labels * distance.pow(2) + (1 - labels) * F.relu(_CONTRASTIVE_MARGIN - distance).pow(2)
        ).mean()
    )


def _schedule(n_steps: int) -> Callable[[int], float]:
    """Linear warm-up over the first tenth of the steps, then linear decay to zero (never
    exactly zero on a step taken: a one-step run still learns)."""
    warmup = int(_WARMUP_SHARE * n_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (n_steps - step) / max(1, n_steps - warmup))

    return factor


def _optimizer(model: TrainableModel, learning_rate: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    seen = set()
    for module in model.modules():
        for parameter in module.parameters():
            if not parameter.requires_grad or id(parameter) in seen:
                continue  # tied weights (T5's shared embedding) are one parameter
            seen.add(id(parameter))
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": _WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=learning_rate,
    )


@contextlib.contextmanager
def _seeded(seed: int, device: str) -> Iterator[None]:
    """torch's random state seeded for the block and restored after it (dropout draws from
    it; the caller's own random numbers are left as they were)."""
    devices = []
    if device.startswith("cuda"):
        devices = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


def _autocast(precision: str, device: str):
    if precision == "bfloat16":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress_bar(show: bool | None, total: int):
    from tqdm.auto import tqdm

    if show is None:
        try:
            show = sys.stderr is not None and sys.stderr.isatty()
        except (AttributeError, ValueError):
            show = False
        show = show or in_notebook()
    return tqdm(total=total, desc="Fine-tuning", unit="step", disable=not show, leave=False)


def _step(
    model: TrainableModel,
    tokenized: TokenizedTexts,
    batch: tuple[np.ndarray, np.ndarray, np.ndarray],
    training: TrainingSettings,
    precision: str,
) -> float:
    """One batch of pairs forward and backward (gradients accumulated, not applied); returns
    the loss."""
    first, second, labels = batch
    # Each text of the step is encoded once, however many pairs it is in.
    rows, where = np.unique(np.concatenate([first, second]), return_inverse=True)
    with _autocast(precision, model.device):
        vectors = model.embed(
            [tokenized.input_ids[row] for row in rows], tokenized.instruction_lengths[rows]
        )
    half = len(first)
    target = torch.as_tensor(labels, device=vectors.device)
    loss = _loss(vectors[where[:half]], vectors[where[half:]], target, training.loss)
    if torch.isfinite(loss):
        loss.backward()
    return float(loss.detach())


def train(
    model: TrainableModel,
    *,
    instruction: str,
    texts: list[str],
    codes: np.ndarray,
    max_seq_length: int,
    training: TrainingSettings,
    precision: str = "float32",
    show_progress_bar: bool | None = None,
) -> TrainingRun:
    """Fine-tune ``model`` in place on pairs drawn from ``codes``; see the module docstring."""
    limit = model.transformer.max_positions
    if limit is not None and max_seq_length > limit:
        raise ValueError(
            f"max_seq_length={max_seq_length} exceeds the {limit} positions this "
            f"{model.transformer.model_type} encoder has."
        )
    tokenizer = model.tokenizer
    tokenizer.check_room_for_text(instruction, max_seq_length)
    tokenized = tokenizer.tokenize([instruction] * len(texts), texts, max_seq_length)
    rng = np.random.default_rng(training.seed)
    pairs_per_epoch = len(texts) * training.pairs_per_text
    steps_per_epoch = math.ceil(pairs_per_epoch / training.batch_size)
    n_steps = steps_per_epoch * training.epochs
    optimizer = _optimizer(model, float(training.learning_rate))
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(n_steps))
    epoch_losses = []
    model.train(True)
    try:
        with _seeded(training.seed, model.device), _progress_bar(show_progress_bar, n_steps) as bar:
            for _ in range(training.epochs):
                first, second, labels = sample_pairs(codes, training.pairs_per_text, rng)
                order = rng.permutation(len(first))
                total, count = 0.0, 0
                for start in range(0, len(order), training.batch_size):
                    chosen = order[start : start + training.batch_size]
                    loss = _step(
                        model,
                        tokenized,
                        (first[chosen], second[chosen], labels[chosen]),
                        training,
                        precision,
                    )
                    if not math.isfinite(loss):
                        raise FloatingPointError(
                            f"the training loss became {loss} at step {bar.n + 1}: lower "
                            f"learning_rate (now {training.learning_rate})."
                        )
                    clip_grad_norm_(parameters, _MAX_GRAD_NORM)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    total += loss * len(chosen)
                    count += len(chosen)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                epoch_losses.append(total / max(count, 1))
    finally:
        model.train(False)
    return TrainingRun(
        n_pairs=pairs_per_epoch * training.epochs, n_steps=n_steps, epoch_losses=tuple(epoch_losses)
    )


def _is_weight_or_export(relative: Path) -> bool:
    parts = relative.parts
    if any(part.startswith(".") for part in parts) or relative.name.lower() == "readme.md":
        return True  # hidden files (.gitattributes, caches) and the base model's card
    if any(part in _EXPORT_FOLDERS for part in parts[:-1]):
        return True
    name = relative.name.lower()
    return name.endswith(_WEIGHT_SUFFIXES) or (
        name.endswith(".index.json") and ("model" in name or "weights" in name)
    )


def _saved(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    return tensor.clone().contiguous()


def save_checkpoint(model: TrainableModel, folder: Path) -> None:
    """Write ``model`` to ``folder`` in its base checkpoint's layout: every file of the base
    (configs, tokenizer, ``modules.json``, stage folders) copied, the weights of the encoder
    and of each Dense stage written anew as ``model.safetensors``."""
    base = model.folder
    folder.mkdir(parents=True, exist_ok=False)
    for source in sorted(base.rglob("*")):
        relative = source.relative_to(base)
        if source.is_dir() or _is_weight_or_export(relative):
            continue
        destination = folder / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)  # follows a hub snapshot's links to its blobs
    for spec in model.specs:  # stage folders without files (3_Normalize) exist too
        (folder / spec.folder.relative_to(base)).mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}
    # Tied tensors (T5's shared embedding) share storage, which safetensors refuses: each is
    # written as its own copy, as the published checkpoints hold them.
    encoder_state = {name: _saved(tensor) for name, tensor in model.encoder.state_dict().items()}
    transformer_folder = folder / model.specs[0].folder.relative_to(base)
    save_file(encoder_state, str(transformer_folder / "model.safetensors"), metadata=metadata)
    for stage, stage_folder in zip(model.dense, model.dense_folders, strict=True):
        state = {
            f"linear.{name}": _saved(tensor) for name, tensor in stage.linear.state_dict().items()
        }
        save_file(
            state, str(folder / stage_folder.relative_to(base) / "model.safetensors"), metadata
        )


def train_and_save(
    base: Path,
    folder: Path,
    *,
    device: str,
    precision: str,
    instruction: str,
    texts: list[str],
    codes: np.ndarray,
    max_seq_length: int,
    training: TrainingSettings,
    show_progress_bar: bool | None = None,
) -> TrainingRun:
    """Load ``base`` for training, fine-tune it, and save it to ``folder`` (a new folder)."""
    model = TrainableModel(Path(os.fspath(base)), device)
    run = train(
        model,
        instruction=instruction,
        texts=texts,
        codes=codes,
        max_seq_length=max_seq_length,
        training=training,
        precision=precision,
        show_progress_bar=show_progress_bar,
    )
    save_checkpoint(model, folder)
    return run
