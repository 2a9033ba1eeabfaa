"""Throughput: InstructorVectorizer against sentence-transformers, same texts, same model.

Both embed the same distinct real texts (``_corpus.py``) under the same instruction, in one
process, in alternating order over several repeats; medians are reported, and the speed ratio is
the median of the per-repeat ratios (the machines are shared: only same-run ratios mean much).
sentence-transformers runs ``encode(texts, prompt=instruction)`` with its default batch size (32)
and ``set_pooling_include_prompt(False)``, which on a BERT-style tokenizer masks exactly what
INSTRUCTOR's rule masks, so the outputs must agree to float32 rounding. Our runs use
``cache=None``: every text is encoded, as in sentence-transformers.

Printed per run: texts/s, tokens/s (instruction included, after truncation, no padding), model
FLOP/s and, where the device's peak is known, MFU; peak memory (CPU: peak resident memory above
the level before the run, freed heap returned first, sampled every 5 ms; CUDA:
``torch.cuda.max_memory_allocated`` above the level before); the max abs difference to
sentence-transformers float32, and for every reduced precision its cosine to our float32
vectors. Model loading times are printed first.

Usage::

    python benchmarks/throughput.py                # CPU, float32, all-MiniLM-L6-v2, 2,000 texts
    python benchmarks/throughput.py --device cuda  # INSTRUCTOR-large-shaped T5 (random weights),
                                                   # float32 / bfloat16 / float16, MFU
    # the CUDA mode's logic, checked on a CPU with a toy T5:
    python benchmarks/throughput.py --model t5-tiny --dtypes float32,bfloat16 \\
        --st-dtypes float32,bfloat16 --n-texts 300 --repeats 2

Targets (issue "Throughput"): CPU float32 >= 1.25x sentence-transformers' texts/s with max abs
difference <= 1e-5; CUDA bfloat16 >= 3x sentence-transformers float32 and >= 40% MFU.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpus import describe, load_corpus, model_path

INSTRUCTION = "Represent the sentence for retrieval: "

# Dense (no sparsity) 16-bit tensor-core peaks in TFLOP/s, by a substring of the device name.
# Checked in order: the first match wins.
_PEAK_TFLOPS_16BIT = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5 / "H100 80GB HBM3"
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)
MIN_COSINE_FOR_DEFAULT = 0.999


@dataclass
class Run:
    """One configuration timed in every repeat."""

    label: str
    library: str  # "ours" or "st"
    dtype: str
    encode: Callable[[list[str]], np.ndarray]
    seconds: list[float] = field(default_factory=list)
    peak_bytes: list[int] = field(default_factory=list)
    base_bytes: list[int] = field(default_factory=list)
    output: np.ndarray | None = None


class PeakMemory:
    """Peak memory above the level at entry: device allocations on CUDA, resident set on CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the process's high-water mark, a coarser figure
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @staticmethod
    def _release_freed_heap() -> None:
        # glibc keeps freed memory mapped; hand it back so that the resident set before a run
        # does not already hold what the previous run freed (its peak would then read as ~0).
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self._release_freed_heap()
            self.base = self._rss()
            self.top = self.base
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.top = max(self.top, self._rss())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.top, self._rss()) - self.base


def model_flops(encoder, lengths: np.ndarray, dense_params: int) -> float:
    """Forward FLOPs of the useful (unpadded) tokens: 2 per multiply-add of every Linear layer
    of the encoder per token, plus attention's two L x L products per layer, plus the Dense."""
    import torch

    linear_params = sum(
        module.weight.numel()
        for name, module in encoder.named_modules()
        if isinstance(module, torch.nn.Linear) and "pooler" not in name  # BERT's unused pooler
    )
    config = encoder.config
    n_layers = getattr(config, "num_layers", None) or config.num_hidden_layers
    if getattr(config, "d_kv", None):
        attention_width = config.num_heads * config.d_kv
    else:
        attention_width = config.hidden_size
    lengths = lengths.astype(np.float64)
    per_token = 2.0 * linear_params * lengths.sum()
    attention = n_layers * 4.0 * attention_width * (lengths**2).sum()
    return per_token + attention + 2.0 * dense_params * len(lengths)


def peak_tflops(device: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "given"
    if not device.startswith("cuda"):
        return None, "unknown for CPUs"
    import torch

    name = torch.cuda.get_device_name(device)
    for key, value in _PEAK_TFLOPS_16BIT:
        if key in name:
            return value, f"{name}, dense 16-bit"
    return None, f"{name}: unknown, pass --peak-tflops"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(denominator, 1e-30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--model", help="minilm (cpu default), t5-large (cuda default), t5-tiny")
    parser.add_argument("--n-texts", type=int, help="default 2000 on cpu, 4000 on cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", help="our dtypes; cpu: float32, cuda: float32,bfloat16,float16")
    parser.add_argument("--st-dtypes", help="sentence-transformers dtypes; cuda: float32,float16")
    parser.add_argument("--st-batch-size", type=int, default=32)
    parser.add_argument("--token-budget", type=int, help="override the engine's default")
    parser.add_argument("--peak-tflops", type=float, help="device peak, when not detected")
    parser.add_argument("--corpus-file", help="JSON list of texts (see _corpus.py export)")
    parser.add_argument("--tokenizer-from", help="tokenizer folder for the random T5 models")
    parser.add_argument("--work-dir", default="/tmp/sk_instructor_bench")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    model_name = args.model or ("t5-large" if cuda else "minilm")
    n_texts = args.n_texts or (4000 if cuda else 2000)
    our_dtypes = (args.dtypes or ("float32,bfloat16,float16" if cuda else "float32")).split(",")
    st_dtypes = (args.st_dtypes or ("float32,float16" if cuda else "float32")).split(",")
    if "float32" not in our_dtypes or "float32" not in st_dtypes:
        parser.error("float32 must be among --dtypes and --st-dtypes: it is the reference.")
    warnings.simplefilter("ignore")  # truncation warnings: long articles are cut on purpose
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import __version__ as st_version

    from sk_instructor import InstructorVectorizer
    from sk_instructor._engine.batching import DEFAULT_TOKEN_BUDGET

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    path = model_path(model_name, args.work_dir, tokenizer_from=args.tokenizer_from)
    print(f"checkpoint {model_name}: {path} (ready in {time.perf_counter() - start:.1f} s)")
    texts = load_corpus(n_texts, corpus_file=args.corpus_file)
    device_name = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"sentence-transformers {st_version}; device {device_name}; "
        f"{torch.get_num_threads()} CPU threads; load average {os.getloadavg()[0]:.1f}"
    )

    if args.token_budget:
        # The engine reads this table at each call; the vectorizer has no budget parameter.
        DEFAULT_TOKEN_BUDGET[torch.device(args.device).type] = args.token_budget

    # -- loading (each library's first load in this process, imports already done) -----------
    vectorizers = {}
    runs: list[Run] = []
    for dtype in our_dtypes:
        vectorizer = InstructorVectorizer(
            model=str(path),
            instruction=INSTRUCTION,
            device=args.device,
            dtype=dtype,
            cache=None,
            show_progress_bar=False,
        )
        synchronize()
        start = time.perf_counter()
        vectorizer.fit(texts[:1])
        synchronize()
        print(f"load sk_instructor {dtype}: {time.perf_counter() - start:.2f} s")
        vectorizers[dtype] = vectorizer
        runs.append(Run(f"sk_instructor {dtype}", "ours", dtype, vectorizer.transform))
    for dtype in st_dtypes:
        synchronize()
        start = time.perf_counter()
        st = SentenceTransformer(str(path), device=args.device)
        st.to(getattr(torch, dtype))
        st.set_pooling_include_prompt(False)
        synchronize()
        print(f"load sentence-transformers {dtype}: {time.perf_counter() - start:.2f} s")

        def st_encode(batch, st=st):
            vectors = st.encode(
                batch,
                prompt=INSTRUCTION,
                batch_size=args.st_batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return np.asarray(vectors, dtype=np.float32)

        runs.append(Run(f"sentence-transformers {dtype}", "st", dtype, st_encode))

    engine = vectorizers["float32"]._encoder().load()
    tokenized = engine._tokenizer.tokenize([INSTRUCTION] * len(texts), texts, engine.max_seq_length)
    lengths = tokenized.lengths
    n_tokens = int(lengths.sum())
    dense_params = sum(
        stage.linear.weight.numel() for stage in engine._later_stages if hasattr(stage, "linear")
    )
    flops = model_flops(engine.transformer.encoder, lengths, dense_params)
    peak, peak_source = peak_tflops(args.device, args.peak_tflops)
    budget = args.token_budget or DEFAULT_TOKEN_BUDGET.get(torch.device(args.device).type)
    print(f"corpus: {describe(texts, lengths)}; {flops / n_tokens / 1e9:.3f} GFLOP per token")
    print(
        f"our token budget {budget} per batch; sentence-transformers batch_size "
        f"{args.st_batch_size}; peak {peak or '-'} TFLOP/s ({peak_source})"
    )

    # -- warm-up on a slice with the longest texts, then alternating timed repeats ------------
    warm = [texts[i] for i in np.argsort(-lengths)[:64]] + texts[:192]
    for run in runs:
        run.encode(warm)
    for repeat in range(args.repeats):
        shift = repeat % len(runs)
        for run in runs[shift:] + runs[:shift]:
            with PeakMemory(args.device) as memory:
                synchronize()
                start = time.perf_counter()
                output = run.encode(texts)
                synchronize()
                run.seconds.append(time.perf_counter() - start)
            run.peak_bytes.append(memory.peak)
            run.base_bytes.append(memory.base)
            if run.output is None:
                run.output = output
        summary = ", ".join(f"{run.label} {run.seconds[-1]:.2f} s" for run in runs)
        print(
            f"repeat {repeat + 1}/{args.repeats}: {summary} "
            f"(load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    # -- report ---------------------------------------------------------------------------------
    reference = next(run for run in runs if run.library == "ours" and run.dtype == "float32")
    st_reference = next(run for run in runs if run.library == "st" and run.dtype == "float32")
    base = np.median([b for run in runs for b in run.base_bytes]) / 2**20
    print(
        f"\npeak MiB: the increase of {'GPU memory' if args.device.startswith('cuda') else 'RSS'}"
        f" during a run over the level before it (median {base:.0f} MiB, every model of this "
        f"process loaded); the run's total is that level plus its peak."
    )
    print(
        f"{'run':<30} {'median s':>9} {'texts/s':>8} {'tokens/s':>10} {'TFLOP/s':>8} "
        f"{'MFU':>6} {'peak MiB':>9}  accuracy"
    )
    for run in runs:
        median = float(np.median(run.seconds))
        achieved = flops / median / 1e12
        mfu = f"{achieved / peak:.1%}" if peak else "-"
        memory = np.median(run.peak_bytes) / 2**20
        if run is reference:
            accuracy = (
                f"max |ours - ST float32| = {np.abs(run.output - st_reference.output).max():.2e}"
            )
        elif run is st_reference:
            accuracy = "(reference)"
        else:
            cosines = cosine_rows(run.output, reference.output)
            verdict = (
                "ok for a default" if cosines.min() >= MIN_COSINE_FOR_DEFAULT else "NOT >= 0.999"
            )
            accuracy = (
                f"cosine to our float32: min {cosines.min():.6f} mean {cosines.mean():.6f} "
                f"({verdict})"
            )
        print(
            f"{run.label:<30} {median:>9.3f} {len(texts) / median:>8.1f} "
            f"{n_tokens / median:>10.0f} {achieved:>8.3f} {mfu:>6} {memory:>9.1f}  {accuracy}"
        )

    print("\nspeed ratios (median over repeats of ST seconds / our seconds, same repeat):")
    for ours in (run for run in runs if run.library == "ours"):
        ratios = []
        for st_run in (run for run in runs if run.library == "st"):
            ratio = float(np.median(np.array(st_run.seconds) / np.array(ours.seconds)))
            ratios.append(f"{ratio:.2f}x vs ST {st_run.dtype}")
        print(f"  {ours.label}: " + ", ".join(ratios))

    print("\ntargets:")
    speedup = float(np.median(np.array(st_reference.seconds) / np.array(reference.seconds)))
    max_diff = float(np.abs(reference.output - st_reference.output).max())
    if not cuda:
        print(f"  CPU float32 >= 1.25x ST: {speedup:.2f}x {'PASS' if speedup >= 1.25 else 'MISS'}")
    print(f"  max abs diff <= 1e-5: {max_diff:.2e} {'PASS' if max_diff <= 1e-5 else 'MISS'}")
    bf16 = next((run for run in runs if run.library == "ours" and run.dtype == "bfloat16"), None)
    if cuda and bf16 is not None:
        ratio = float(np.median(np.array(st_reference.seconds) / np.array(bf16.seconds)))
        print(f"  CUDA bfloat16 >= 3x ST float32: {ratio:.2f}x {'PASS' if ratio >= 3 else 'MISS'}")
        if peak:
            mfu = flops / float(np.median(bf16.seconds)) / 1e12 / peak
            print(f"  CUDA bfloat16 MFU >= 40%: {mfu:.1%} {'PASS' if mfu >= 0.4 else 'MISS'}")


if __name__ == "__main__":
    main()
