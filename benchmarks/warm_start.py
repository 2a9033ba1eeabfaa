"""Warm start: a second process whose every vector is in the disk cache, against the first.

Two fresh interpreters run the same ``InstructorVectorizer(...).fit_transform(texts)`` on one
on-disk cache: the first finds it empty (it loads the model and encodes everything), the
second finds every vector (it answers from the cache without loading the model). Timed is the
``fit_transform`` call, model loading included; ``import sk_instructor`` before it is printed
apart. Target (issue "What a new user tripped over", point 8): the second >= 10x faster.

    python benchmarks/warm_start.py                 # all-MiniLM-L6-v2, 300 real texts
    python benchmarks/warm_start.py --n-texts 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

_PROCESS = """
import json, sys, time
started = time.perf_counter()
from sk_instructor import DiskCache, InstructorVectorizer
imported = time.perf_counter()
model, cache_path, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
vectorizer = InstructorVectorizer(model, instruction=sys.argv[4], cache=DiskCache(cache_path))
begin = time.perf_counter()
vectors = vectorizer.fit_transform(texts)
seconds = time.perf_counter() - begin
print(json.dumps({
    "import_s": imported - started,
    "fit_transform_s": seconds,
    "torch_imported": "torch" in sys.modules,
    "checksum": float(vectors.sum()),
}))
"""


def _run(model: str, cache: Path, texts: list[str], instruction: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROCESS, model, str(cache), json.dumps(texts), instruction],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> None:
    from _corpus import load_corpus, model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="minilm or a model folder")
    parser.add_argument("--n-texts", type=int, default=300)
    parser.add_argument("--instruction", default="Represent the sentence: ")
    args = parser.parse_args(argv)
    print(f"options: {vars(args)}")
    model = str(model_path(args.model, tempfile.mkdtemp()))
    texts = load_corpus(args.n_texts)
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        cold = _run(model, cache, texts, args.instruction)
        warm = _run(model, cache, texts, args.instruction)
    assert abs(cold["checksum"] - warm["checksum"]) < 1e-3, "the cache answered other vectors"
    for name, run in (("first process (empty cache)", cold), ("second process (warm)", warm)):
        print(
            f"{name:30s} fit_transform {run['fit_transform_s']:7.3f} s   "
            f"(import sk_instructor {run['import_s']:.2f} s, torch imported: "
            f"{run['torch_imported']})"
        )
    ratio = cold["fit_transform_s"] / warm["fit_transform_s"]
    print(f"second process is {ratio:.1f}x faster on fit_transform, loading included (target 10x)")


if __name__ == "__main__":
    main()
