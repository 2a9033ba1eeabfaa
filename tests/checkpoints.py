"""Tiny checkpoints in the published layout, for the tests and the benchmarks.

No INSTRUCTOR weights can be downloaded on the project's machines, so the T5 code path is
exercised on a randomly initialised T5 encoder saved exactly as hkunlp/instructor-* are:
Transformer at the root (``config.json``, tokenizer files, ``pytorch_model.bin``,
``sentence_bert_config.json``), ``1_Pooling``, ``2_Dense`` (no bias, Identity), ``3_Normalize``
and ``modules.json``. The vectors mean nothing; the code path is the real one.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Literal

__all__ = ["build_t5_checkpoint"]

# A few sentences to train the toy tokenizer on: the words of the usual instructions plus
# ordinary prose, so that instructions and texts split into several tokens each.
_TRAINING_TEXT = [
    "Represent the Science title: ",
    "Represent the Wikipedia question for retrieving supporting documents: ",
    "Represent the Wikipedia document for retrieval: ",
    "Represent the Medicine sentence for clustering: ",
    "Represent the Financial statement for classification: ",
    "Represent the sentence: ",
    "3D ActionSLAM: wearable person tracking in multi-floor environments",
    "The Federal Reserve on Wednesday raised its benchmark interest rate.",
    "Parton energy loss in QCD matter and the chiral phase transition.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Where is the nearest train station? How do I get to the airport?",
    "Scientists discovered a new species of frog in the rain forest.",
    "The stock market fell sharply after the announcement of new tariffs.",
    "Patients with diabetes should monitor their blood sugar levels daily.",
]

_LAYOUT_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    {
        "idx": 3,
        "name": "3",
        "path": "3_Normalize",
        "type": "sentence_transformers.models.Normalize",
    },
]


def build_t5_checkpoint(
    folder: str | Path,
    *,
    weights: Literal["bin", "safetensors"] = "bin",
    d_model: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: int = 64,
    dense_out: int = 16,
    max_seq_length: int = 64,
    vocab_size: int = 300,
    pooling: str = "mean",
    seed: int = 0,
) -> Path:
    """Write a random T5 encoder checkpoint in the INSTRUCTOR layout to ``folder``.

    Defaults build in a fraction of a second. ``d_model=1024, num_layers=24, num_heads=16,
    d_ff=4096, dense_out=768, vocab_size=32128`` gives an instructor-large-shaped encoder.

    Examples
    --------
    >>> import tempfile
    >>> from checkpoints import build_t5_checkpoint
    >>> path = build_t5_checkpoint(tempfile.mkdtemp())
    >>> sorted(p.name for p in path.iterdir())[:3]
    ['1_Pooling', '2_Dense', '3_Normalize']
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    # Tokenizer shaped like T5's: Unigram pieces, Metaspace ("▁") word boundaries, </s> appended.
    # The pieces are counted here rather than learnt by tokenizers' UnigramTrainer, which
    # orders equal-scored pieces by a randomly seeded hash map: its token ids changed from one
    # build to the next, and so did every vector of the "same" checkpoint.
    tokenizer = Tokenizer(
        models.Unigram(_unigram_vocab(_TRAINING_TEXT, min(vocab_size, 300)), unk_id=2)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", eos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )
    fast.save_pretrained(folder)

    config = T5Config(
        vocab_size=max(vocab_size, tokenizer.get_vocab_size()),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="relu",
        pad_token_id=fast.pad_token_id,
        eos_token_id=eos_id,
        decoder_start_token_id=fast.pad_token_id,
    )
    encoder = T5EncoderModel(config).eval()
    config.save_pretrained(folder)
    _save_state(
        encoder.state_dict(),
        folder,
        "model" if weights == "safetensors" else "pytorch_model",
        weights,
    )

    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling_flags = {
        f"pooling_mode_{key}": key == _POOLING_KEYS[pooling] for key in _POOLING_KEYS.values()
    }
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": d_model, **pooling_flags})
    )
    dense_folder = folder / "2_Dense"
    dense_folder.mkdir(exist_ok=True)
    (dense_folder / "config.json").write_text(
        json.dumps(
            {
                "in_features": d_model,
                "out_features": dense_out,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    dense_weight = torch.randn(dense_out, d_model) / d_model**0.5
    _save_state(
        {"linear.weight": dense_weight},
        dense_folder,
        "model" if weights == "safetensors" else "pytorch_model",
        weights,
    )
    (folder / "3_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(_LAYOUT_MODULES, indent=2))
    return folder


def _unigram_vocab(texts: list[str], size: int) -> list[tuple[str, float]]:
    """A Unigram vocabulary of at most ``size`` pieces, the same on every call.

    The three special tokens, every character of ``texts``, every whole word (starting with
    "▁" as Metaspace writes it), then the most frequent pieces of words, each scored by its
    log frequency as a Unigram model scores pieces. Whole words make an instruction cut
    mid-word tokenize differently alone and joined to its text, as T5's vocabulary does.
    """
    words = ["▁" + word for text in texts for word in text.split()]
    instruction_words = {
        "▁" + word for text in texts if text.startswith("Represent") for word in text.split()
    }
    counts: Counter[str] = Counter()
    for word in words:
        for start in range(len(word)):
            for end in range(start + 1, len(word) + 1):
                counts[word[start:end]] += 1
    characters = sorted(piece for piece in counts if len(piece) == 1)
    whole = sorted(instruction_words - set(characters))
    taken = set(characters) | set(whole)
    rest = sorted((piece for piece in counts if piece not in taken), key=lambda p: (-counts[p], p))
    pieces = characters + whole + rest[: max(size - 3 - len(taken), 0)]
    total = sum(counts[piece] for piece in pieces)
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    return specials + [
        (piece, math.log(counts[piece] / total))
        for piece in sorted(pieces, key=lambda p: (-counts[p], p))
    ]


_POOLING_KEYS = {
    "mean": "mean_tokens",
    "cls": "cls_token",
    "max": "max_tokens",
    "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "lasttoken": "lasttoken",
}


def _save_state(state: dict, folder: Path, stem: str, weights: str) -> None:
    import torch

    # Tied tensors (T5's shared embedding and encoder.embed_tokens) share storage; safetensors
    # refuses shared storage, and a pickled file would store it once anyway, so copy each.
    state = {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / f"{stem}.safetensors"))
    else:
        torch.save(state, folder / f"{stem}.bin")


def add_to_hub_cache(cache: str | Path, repo_id: str, folder: str | Path) -> Path:
    """Place ``folder`` in a Hugging Face hub cache as the ``main`` revision of ``repo_id``.

    The layout is huggingface_hub's own (``models--org--name/snapshots/<commit>/`` and
    ``refs/main``), so ``snapshot_download(repo_id)`` finds it offline through the real
    lookup, as it finds a model downloaded once. The snapshot links to ``folder``.

    Examples
    --------
    >>> import tempfile
    >>> from checkpoints import add_to_hub_cache
    >>> cache, model = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> add_to_hub_cache(cache, "org/model", model).name
    '5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e'
    """
    commit = "5ca1ab1e" * 5
    repository = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repository / "refs").mkdir(parents=True, exist_ok=True)
    (repository / "snapshots").mkdir(exist_ok=True)
    (repository / "refs" / "main").write_text(commit)
    snapshot = repository / "snapshots" / commit
    if not snapshot.exists():
        snapshot.symlink_to(Path(folder).resolve(), target_is_directory=True)
    return snapshot
