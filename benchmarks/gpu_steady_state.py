"""Steady-state GPU throughput per encoder path: transformers' module, the fast forward, compiled.

Embeds at least 20,000 distinct (instruction, text) pairs (the benchmark corpus under a few
instruction variants: the engine deduplicates pairs, not texts) with ``cache=None``, through
``EmbeddingModel.encode`` on each path in turn, in one process, and prints per path:

- the first call (model warm, shapes new: for the compiled path, this includes compiling every
  padded width the corpus needs) and the steady state (median of ``--repeats`` further calls);
- texts/s, useful tokens/s (instruction included, no padding), model TFLOP/s and MFU against the
  device's dense 16-bit peak, counted as ``throughput.py`` counts them;
- the batches the engine ran (distinct widths and shapes, padded tokens above the useful ones);
- the median time of a 50-text call (start-up must not regress);
- under ``torch.profiler``, over ``--profile-texts`` pairs: the attention operator that ran (math,
  efficient, flash or cuDNN SDPA), its top kernel, its share of GPU time, and how busy the GPU
  was (union of kernel and copy intervals over the profiled wall time);
- fidelity on ``--reference-texts`` pairs: transformers' float32 against the fast float32 (max
  abs difference, target <= 1e-5) and each path's min cosine to transformers' float32 (target
  >= 0.9999 in bfloat16; random weights, so a smoke figure);

then the speed ratios with both sides, a token-budget sweep on the fast paths, and, with
``--second-process``, the first call of a fresh process that finds the compiled code in
inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``).

Usage (see gpu_check.sh, which runs it with a fresh inductor cache)::

    python benchmarks/gpu_steady_state.py --device cuda --model t5-large \\
        --corpus-file build/gpu_payload/corpus.json --tokenizer-from build/gpu_payload/tokenizer
    # the logic, on a CPU with a toy T5:
    python benchmarks/gpu_steady_state.py --device cpu --model t5-tiny --dtype float32 \\
        --n-texts 1200 --profile-texts 200 --reference-texts 100 --budgets 1024,2048

Target: bfloat16 >= 40% MFU end to end on an H100/H200, instructor-large shape.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpus import corpus_size, describe, load_corpus, model_path
from throughput import cosine_rows, model_flops, peak_tflops

# Instruction variants of the same length: each multiplies the distinct pairs of the corpus.
INSTRUCTIONS = (
    "Represent the sentence for retrieval: ",
    "Represent the document for retrieval: ",
    "Represent the passage for retrieval: ",
    "Represent the paragraph for retrieval: ",
    "Represent the statement for retrieval: ",
    "Represent the text for retrieval: ",
)
# Path name -> (implementation, compile, the padded width a dynamic dimension of the compiled
# graphs): "compiled" is what compile=True does (one graph per bucketed width);
# "compiled-dynamic" the alternative with one graph for every width, padded to multiples of 8
# as the eager fast forward is (fewer compilations and less padding; slower kernels?).
# In this order by default: the cheap compilation before the expensive one, so that a timeout
# in the latter (its cost is the unknown) leaves every other row printed.
PATHS = {
    "transformers": ("transformers", False, False),
    "fast": ("fast", False, False),
    "compiled-dynamic": ("fast", True, True),
    "compiled": ("fast", True, False),
}
ATTENTION_OPS = "aten::_scaled_dot_product_"
ATTENTION_KERNEL_WORDS = ("fmha", "flash", "attention", "attn", "cudnn", "sdpa", "softmax")


@dataclass
class PathResult:
    name: str
    load_s: float = 0.0
    first_s: float = 0.0
    seconds: list[float] = field(default_factory=list)
    small_ms: float = 0.0
    widths: int = 0
    shapes: int = 0
    padding: float = 0.0
    attention: str = "-"
    attention_kernel: str = "-"
    attention_share: float | None = None
    busy: float | None = None
    min_cosine: float | None = None
    budgets: dict[int, float] = field(default_factory=dict)


def corpus_pairs(n_pairs: int, corpus_file: str | None) -> tuple[list[str], list[str]]:
    """``n_pairs`` distinct pairs: every corpus text under the first instruction, then again
    under the next one, and so on."""
    texts = load_corpus(corpus_size(corpus_file), corpus_file=corpus_file)
    if n_pairs > len(texts) * len(INSTRUCTIONS):
        raise SystemExit(f"at most {len(texts) * len(INSTRUCTIONS)} distinct pairs here")
    instructions = [INSTRUCTIONS[k // len(texts)] for k in range(n_pairs)]
    return instructions, [texts[k % len(texts)] for k in range(n_pairs)]


def engine_flops(engine, lengths: np.ndarray) -> float:
    dense_params = sum(
        stage.linear.weight.numel() for stage in engine._later_stages if hasattr(stage, "linear")
    )
    return model_flops(engine.transformer.encoder, lengths, dense_params)


def record_batches(engine):
    """Wrap ``engine._forward`` to record (rows, padded width, useful tokens) per batch."""
    batches: list[tuple[int, int, int]] = []
    real_forward = engine._forward
    pad_to = engine.transformer.pad_to

    def forward(input_ids, instruction_lengths, *, normalize):
        longest = max(len(row) for row in input_ids)
        width = int(pad_to(np.array([longest]))[0]) if pad_to is not None else longest
        batches.append((len(input_ids), width, sum(len(row) for row in input_ids)))
        return real_forward(input_ids, instruction_lengths, normalize=normalize)

    engine._forward = forward
    return batches, lambda: engine.__dict__.pop("_forward", None)


def profile(engine, instructions, texts, *, cuda: bool) -> dict:
    """Attention operator, its top kernel and share, and GPU busy %, over one encode call."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        engine.encode(instructions, texts, cache=None)
        if cuda:
            torch.cuda.synchronize()
    events = list(prof.events())
    start = min(event.time_range.start for event in events)
    end = max(event.time_range.end for event in events)
    attention_ops: dict[str, int] = {}
    attention_time = 0.0
    for event in events:
        if event.device_type == DeviceType.CPU and event.name.startswith(ATTENTION_OPS):
            attention_ops[event.name] = attention_ops.get(event.name, 0) + 1
            attention_time += event.device_time_total if cuda else event.cpu_time_total
    result = {
        "attention": ", ".join(f"{name[len('aten::') :]} x{n}" for name, n in attention_ops.items())
        or "no fused SDPA operator (decomposed into matmul + softmax)",
        "attention_kernel": "-",
        "attention_share": None,
        "busy": None,
    }
    if not cuda:
        result["attention_share"] = attention_time / max(end - start, 1e-9)
        return result
    device_events = [event for event in events if event.device_type == DeviceType.CUDA]
    kernel_total = sum(event.time_range.end - event.time_range.start for event in device_events)
    by_name: dict[str, float] = {}
    for event in device_events:
        if any(word in event.name.lower() for word in ATTENTION_KERNEL_WORDS):
            duration = event.time_range.end - event.time_range.start
            by_name[event.name] = by_name.get(event.name, 0.0) + duration
    if by_name:
        result["attention_kernel"] = max(by_name, key=by_name.get)[:70]
    result["attention_share"] = attention_time / max(kernel_total, 1e-9)
    # Busy: the union of device intervals (kernels, copies) over the profiled wall time.
    intervals = sorted((event.time_range.start, event.time_range.end) for event in device_events)
    busy, current_start, current_end = 0.0, None, None
    for interval_start, interval_end in intervals:
        if current_end is None or interval_start > current_end:
            if current_end is not None:
                busy += current_end - current_start
            current_start, current_end = interval_start, interval_end
        else:
            current_end = max(current_end, interval_end)
    if current_end is not None:
        busy += current_end - current_start
    result["busy"] = busy / max(end - start, 1e-9)
    return result


_SECOND_PROCESS = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
import torch
from torch._dynamo.utils import counters
from sk_instructor._engine.registry import get_model
folder, device, dtype, pairs_file = sys.argv[1:5]
instructions, texts = json.load(open(pairs_file))
start = time.perf_counter()
engine = get_model(folder, device=device, dtype=dtype, compile=True, implementation="fast")
loaded = time.perf_counter()
engine.encode(instructions, texts, cache=None)
if device.startswith("cuda"):
    torch.cuda.synchronize()
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "first_s": done - loaded,
                  "inductor": dict(counters["inductor"])}))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="t5-large", help="t5-large, t5-base, t5-tiny, a folder")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--n-texts", type=int, default=20_000, help="distinct pairs encoded")
    parser.add_argument("--repeats", type=int, default=2, help="steady-state calls per path")
    parser.add_argument("--profile-texts", type=int, default=2000)
    parser.add_argument("--reference-texts", type=int, default=500)
    parser.add_argument("--small-calls", type=int, default=10, help="timed 50-text calls")
    parser.add_argument(
        "--budgets", default="16384,32768", help="token budgets to sweep, besides the default"
    )
    parser.add_argument("--budget-paths", default="fast", help="paths that sweep the budgets")
    parser.add_argument("--second-process", action="store_true")
    parser.add_argument("--second-process-timeout", type=float, default=150)
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--corpus-file")
    parser.add_argument("--tokenizer-from")
    parser.add_argument("--work-dir", default="/tmp/sk_instructor_bench")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # truncation warnings: long articles are cut on purpose
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"options: {vars(args)}")

    import torch
    import transformers

    from sk_instructor._engine.batching import DEFAULT_TOKEN_BUDGET, align_lengths
    from sk_instructor._engine.checkpoint import resolve_model
    from sk_instructor._engine.model import EmbeddingModel
    from sk_instructor._engine.registry import get_model

    cuda = args.device.startswith("cuda")

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    folder = model_path(args.model, args.work_dir, tokenizer_from=args.tokenizer_from)
    print(f"checkpoint {args.model}: {folder} (ready in {time.perf_counter() - start:.1f} s)")
    instructions, texts = corpus_pairs(args.n_texts, args.corpus_file)
    device_name = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}; device "
        f"{device_name}; dtype {args.dtype}; inductor cache "
        f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR', '(default)')}"
    )
    peak, peak_source = peak_tflops(args.device, args.peak_tflops)
    names = [name for name in args.paths.split(",") if name]
    unknown = set(names) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}; choose among {list(PATHS)}")
    counter = get_model(folder, device=args.device, dtype="float32", implementation="transformers")
    lengths = counter._tokenizer.tokenize(instructions, texts, counter.max_seq_length).lengths
    n_tokens = int(lengths.sum())
    flops = engine_flops(counter, lengths)
    print(
        f"pairs: {describe(texts, lengths)} under {len(set(instructions))} instructions; "
        f"{flops / n_tokens / 1e9:.3f} GFLOP per token; peak {peak or '-'} TFLOP/s ({peak_source})"
    )

    reference_pairs = (instructions[: args.reference_texts], texts[: args.reference_texts])
    # transformers' float32 is the reference; the fast float32 must equal it to 1e-5.
    reference_vectors, fast_vectors = (
        get_model(
            folder, device=args.device, dtype="float32", implementation=implementation
        ).encode(*reference_pairs, cache=None)
        for implementation in ("transformers", "fast")
    )
    max_diff = float(np.abs(fast_vectors - reference_vectors).max())
    print(
        f"float32 fidelity on {len(reference_pairs[1])} pairs: max |fast - transformers| = "
        f"{max_diff:.2e} ({'PASS' if max_diff <= 1e-5 else 'MISS'} <= 1e-5)"
    )
    budgets = [int(b) for b in args.budgets.split(",") if b]

    def run_path(name: str) -> PathResult:
        implementation, compile_, dynamic_width = PATHS[name]
        result = PathResult(name)
        if compile_:
            # Every fast encoder compiles the same layer function, and dynamo keeps its graphs
            # per function: without a reset, one compiled path would run the graphs of the
            # other (a dynamic-width graph accepts every width) and compile nothing itself.
            torch._dynamo.reset()
        synchronize()
        start = time.perf_counter()
        settings = {"device": args.device, "dtype": args.dtype, "compile": compile_}
        if dynamic_width:
            # Not the registry's instance: the same settings but for this private switch.
            engine = EmbeddingModel(resolve_model(folder), implementation="fast", **settings)
            engine.transformer.encoder.dynamic_width = True
            # One graph serves every width: no buckets needed, multiples of 8 as eager.
            engine.transformer.pad_to = align_lengths
        else:
            engine = get_model(folder, implementation=implementation, **settings)
        synchronize()
        result.load_s = time.perf_counter() - start

        batches, unwrap = record_batches(engine)
        synchronize()
        start = time.perf_counter()
        engine.encode(instructions, texts, cache=None)
        synchronize()
        result.first_s = time.perf_counter() - start
        unwrap()
        result.widths = len({width for _, width, _ in batches})
        result.shapes = len({(rows, width) for rows, width, _ in batches})
        padded = sum(rows * width for rows, width, _ in batches)
        result.padding = padded / sum(useful for _, _, useful in batches) - 1
        for _ in range(args.repeats):
            synchronize()
            start = time.perf_counter()
            engine.encode(instructions, texts, cache=None)
            synchronize()
            result.seconds.append(time.perf_counter() - start)
        small = []
        for call in range(args.small_calls):
            chunk = slice(50 * call, 50 * call + 50)
            synchronize()
            start = time.perf_counter()
            engine.encode(instructions[chunk], texts[chunk], cache=None)
            synchronize()
            small.append(time.perf_counter() - start)
        result.small_ms = 1000 * float(np.median(small)) if small else float("nan")
        if args.profile_texts:
            profiled = profile(
                engine, instructions[: args.profile_texts], texts[: args.profile_texts], cuda=cuda
            )
            for key, value in profiled.items():
                setattr(result, key, value)
        vectors = engine.encode(*reference_pairs, cache=None)
        result.min_cosine = float(cosine_rows(vectors, reference_vectors).min())
        if name in args.budget_paths.split(","):
            for budget in budgets:
                engine.encode(instructions[:2000], texts[:2000], cache=None, token_budget=budget)
                synchronize()
                start = time.perf_counter()
                engine.encode(instructions, texts, cache=None, token_budget=budget)
                synchronize()
                result.budgets[budget] = time.perf_counter() - start
        return result

    def row(result: PathResult) -> str:
        median = float(np.median(result.seconds))
        achieved = flops / median / 1e12
        mfu = f"{achieved / peak:.1%}" if peak else "-"
        busy = f"{result.busy:.1%}" if result.busy is not None else "-"
        share = f"{result.attention_share:.1%}" if result.attention_share is not None else "-"
        return (
            f"{result.name:<16} {result.load_s:>6.1f} {result.first_s:>8.2f} {median:>9.3f} "
            f"{len(texts) / median:>8.0f} {n_tokens / median:>9.0f} {achieved:>8.2f} {mfu:>6} "
            f"{result.small_ms:>10.1f} {result.widths:>6} {result.shapes:>6} "
            f"{result.padding:>7.1%} {busy:>8} {share:>10}  {result.min_cosine:.6f}"
        )

    header = (
        f"{'path':<16} {'load s':>6} {'first s':>8} {'steady s':>9} {'texts/s':>8} "
        f"{'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'50-text ms':>10} {'widths':>6} "
        f"{'shapes':>6} {'padding':>8} {'GPU busy':>8} {'attn share':>10}  min cos to fp32"
    )
    print(f"\nper path, as each finishes (first call: shapes new, compilation included):\n{header}")
    results: dict[str, PathResult] = {}
    for name in names:
        try:
            results[name] = run_path(name)
        except Exception as exc:  # one path failing (e.g. no Triton) must not end the run
            print(f"{name}: FAILED: {type(exc).__name__}: {str(exc)[:500]}", flush=True)
            continue
        print(row(results[name]), flush=True)

    # -- report -----------------------------------------------------------------------------
    print(f"\nsummary:\n{header}")
    for result in results.values():
        print(row(result))
    print("\nattention per path (operator x calls; top kernel):")
    for result in results.values():
        print(f"  {result.name}: {result.attention}; kernel {result.attention_kernel}")
    baseline = results.get("transformers")
    if baseline is not None:
        print("\nspeed ratios (median steady-state seconds, same process):")
        base = float(np.median(baseline.seconds))
        for result in results.values():
            if result is not baseline:
                median = float(np.median(result.seconds))
                print(
                    f"  {result.name} {median:.3f} s vs transformers {base:.3f} s: "
                    f"{base / median:.2f}x; 50-text call {result.small_ms:.1f} ms vs "
                    f"{baseline.small_ms:.1f} ms"
                )
    default_budget = DEFAULT_TOKEN_BUDGET.get(torch.device(args.device).type)
    for result in results.values():
        if result.budgets:
            shown = ", ".join(f"{b}: {s:.3f} s" for b, s in result.budgets.items())
            print(
                f"token budget sweep, {result.name} (whole set, one call each): {shown}; default "
                f"{default_budget}: {float(np.median(result.seconds)):.3f} s (steady median)"
            )
    for result in results.values():
        if result.name.startswith("compiled"):
            steady = float(np.median(result.seconds))
            print(
                f"\n{result.name} first call {result.first_s:.2f} s vs its steady state "
                f"{steady:.3f} s: compilation costs ~{result.first_s - steady:.1f} s in a cold "
                f"process"
            )
    if "compiled" in results:
        result = results["compiled"]
        if args.second_process:
            pairs_file = Path(args.work_dir) / "second_process_pairs.json"
            pairs_file.write_text(json.dumps([instructions, texts]))
            command = [sys.executable, "-c", _SECOND_PROCESS, str(folder), args.device]
            completed = subprocess.run(
                [*command, args.dtype, str(pairs_file)],
                capture_output=True,
                text=True,
                timeout=args.second_process_timeout,
            )
            if completed.returncode != 0:
                print(f"second process failed: {completed.stderr[-2000:]}")
            else:
                second = json.loads(completed.stdout.strip().splitlines()[-1])
                counters = second["inductor"]
                print(
                    f"second process, same inductor cache: first call {second['first_s']:.2f} s "
                    f"(load {second['load_s']:.1f} s) vs {result.first_s:.2f} s cold; FX graph "
                    f"cache hits {counters.get('fxgraph_cache_hit', 0)}, misses "
                    f"{counters.get('fxgraph_cache_miss', 0)}"
                )

    if any(name in results for name in ("fast", "compiled", "compiled-dynamic")):
        print("\ntargets:")
        for name in ("fast", "compiled", "compiled-dynamic"):
            if name in results and peak:
                mfu = flops / float(np.median(results[name].seconds)) / 1e12 / peak
                print(f"  {name} MFU >= 40%: {mfu:.1%} {'PASS' if mfu >= 0.4 else 'MISS'}")
        for result in results.values():
            if result.busy is not None:
                verdict = "PASS" if result.busy >= 0.95 else "MISS"
                print(f"  {result.name} GPU busy >= 95%: {result.busy:.1%} {verdict}")
        if baseline is not None:
            for result in results.values():
                if result is not baseline:
                    verdict = "PASS" if result.small_ms <= baseline.small_ms else "MISS"
                    print(
                        f"  {result.name} 50-text call no slower than transformers': "
                        f"{result.small_ms:.1f} ms vs {baseline.small_ms:.1f} ms {verdict}"
                    )


if __name__ == "__main__":
    main()
