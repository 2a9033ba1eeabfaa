"""CPU runtimes side by side: our float32, our reduced modes, sentence-transformers and the
ONNX Runtime / OpenVINO engines, on the same texts, in one process, alternating.

Rows (each skipped, with the reason printed, when it cannot run here):

- ``ours float32``: the default (``dtype="auto"`` is float32 on a CPU); the reference of every
  fidelity column.
- ``ours bfloat16``: ``dtype="bfloat16"`` (oneDNN's bf16 matmuls where the CPU has
  avx512_bf16 / AMX): transformers' module for MiniLM, our fast forward for T5 (the engine's
  choice for T5 in bfloat16 on a CPU).
- ``ours openvino f32`` / ``ours openvino bf16``: the public API,
  ``InstructorVectorizer(backend="openvino", dtype="float32" / "bfloat16")``: the encoder body
  converted in-process with ``openvino.convert_model`` and run by OpenVINO, everything else
  the engine's (threads follow torch's setting, as in the engine).
- ``... one stream``: the row above it with ``$SK_INSTRUCTOR_CPU_STREAMS=1``: one batch at a
  time on every thread, as the engine ran before it encoded batches side by side on the CPU
  (``_engine/cpu_streams.py``); the rows without it run the default, a stream per thread.
- T5 only: ``ours bfloat16 transformers``: transformers' module in bfloat16 forced
  (``implementation="transformers"``), what the engine ran before it chose the fast forward;
  ``ours float32 fast`` / ``ours bfloat16 fast``: our T5 forward (``t5_encoder.py``)
  forced on the CPU (``implementation="fast"``); ``ours bfloat16 fast+compile``: the same
  compiled (``compile=True``, one dynamic-width graph), timed at the thread count it was
  compiled at only (inductor fixes the OpenMP thread count in the code it generates).
- ``ours autocast-bf16 [bench]`` (T5: also ``... fast``): the float32 model with only its encoder
  run under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (matrix products in bfloat16;
  layer norms, softmax, the residual stream, pooling and Dense in float32): a candidate fast
  mode the engine does not offer yet.
- MiniLM only: ``bf16 + torch.compile [bench]``: transformers' BERT module wrapped in
  ``torch.compile(dynamic=True)`` inside our engine, an experiment: the engine compiles T5 only.
- ``ST torch float32``: sentence-transformers' ``encode(prompt=...)`` with the prompt left out of
  pooling, batch size 32. ``ST onnx`` / ``ST openvino``: its ``backend=`` options, when
  importable (they need optimum, whose releases pull transformers back to 4.57).
- ``ORT float32 [engine]``, ``OpenVINO <hint> [engine]``, ``OpenVINO f32 [engine]``: our engine
  (tokenization, length-sorted token-budgeted batches, pooling, Dense, normalize) with only the
  encoder forward replaced by an ONNX Runtime session or an OpenVINO compiled model of the same
  module (``torch.onnx.export``, dynamo exporter; for T5 our fast forward, as transformers' T5
  fails in that exporter), checked against torch on a padded batch before any row runs: what
  an ONNX Runtime or OpenVINO backend
  would give this library. OpenVINO's default precision hint is bfloat16 on CPUs with
  avx512_bf16 / AMX; the row says which it used. ``--int8`` adds ``ORT dynamic int8 [engine]``.

Texts: short real snippets (movie reviews and news sentences from ``sk_instructor.datasets``,
the length of the Rotten Tomatoes snippets of the issue), distinct, under one instruction that
pooling masks. Printed per row, thread count and load: texts/s and tokens/s (instruction
included, no padding; medians over repeats), the speed ratio to ours float32 (median over
repeats of the per-repeat ratio), the max abs difference and the min cosine of its vectors to
ours float32 at the same thread count, and the load average (1 min) seen during its runs.

``--loads idle,busy`` runs every setting again with one core kept busy by a child process
(``python -c 'while True: pass'``), ended right after. The project's machines are shared (2
cores): "idle" means only that this script adds no load; read the load average beside each
figure.

Usage::

    python benchmarks/cpu_runtimes.py                       # MiniLM, 600 texts, threads 1,2
    python benchmarks/cpu_runtimes.py --models minilm,t5-base --t5-texts 120 --repeats 2
    python benchmarks/cpu_runtimes.py --loads idle,busy --int8
    python benchmarks/cpu_runtimes.py --models minilm,t5-base --threads 1 \
        --rows "bfloat16,openvino,OpenVINO,ORT"   # the README's table
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpus import model_path

INSTRUCTION = "Represent the sentence for retrieval: "
# What a reduced mode must keep to be offered (the bar for the fast mode).
MIN_COSINE_FAST_MODE = 0.9999


def short_texts(n_texts: int, seed: int = 0) -> list[str]:
    """``n_texts`` distinct short real texts: every movie-review snippet, then news sentences of
    5 to 40 words, in a fixed shuffled order."""
    from sk_instructor.datasets import load_lee_background, load_polarity

    reviews = [text.strip() for text in load_polarity().data if text.strip()]
    sentences = [
        sentence.strip()
        for doc in load_lee_background().data
        for sentence in re.split(r"(?<=[.!?])\s+", doc)
        if 5 <= len(sentence.split()) <= 40
    ]
    texts = list(dict.fromkeys(reviews + sentences))
    if n_texts > len(texts):
        raise SystemExit(f"the short-text corpus has {len(texts)} distinct texts; asked {n_texts}")
    rng = np.random.default_rng(seed)
    chosen = [texts[i] for i in rng.permutation(len(texts))[:n_texts]]
    return chosen


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(axis=1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30
    )


@dataclass
class Row:
    """One configuration, timed at each thread count and load."""

    label: str
    # texts, threads -> float32 vectors
    encode: Callable[[list[str], int], np.ndarray]
    # Thread counts it runs at (None: all).
    threads: tuple[int, ...] | None = None
    seconds: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    loadavg: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    outputs: dict[int, np.ndarray] = field(default_factory=dict)
    first_call: dict[int, float] = field(default_factory=dict)

    def runs_at(self, threads: int) -> bool:
        return self.threads is None or threads in self.threads


# -- the rows ---------------------------------------------------------------------------------
def torch_row(label: str, model, threads: tuple[int, ...] | None = None) -> Row:
    import torch

    def encode(texts: list[str], n_threads: int) -> np.ndarray:
        torch.set_num_threads(n_threads)
        return model.encode([INSTRUCTION] * len(texts), texts, cache=None)

    return Row(label, encode, threads)


def streams_capped(value: str):
    """``$SK_INSTRUCTOR_CPU_STREAMS`` set to ``value`` inside (the engine reads it per encode)."""
    from sk_instructor._engine.cpu_streams import STREAMS_ENV

    return mock.patch.dict(os.environ, {STREAMS_ENV: value})


def one_stream(row: Row) -> Row:
    """``row`` with the engine's CPU streams capped at one: one batch at a time on every
    thread, the engine before streams (``_engine/cpu_streams.py``)."""

    def encode(texts: list[str], n_threads: int) -> np.ndarray:
        with streams_capped("1"):
            return row.encode(texts, n_threads)

    return Row(f"{row.label} one stream", encode, row.threads)


class AutocastEncoder:
    """The encoder run under ``torch.autocast("cpu", torch.bfloat16)``: weights stay float32,
    matrix products run in bfloat16 (weights cast per call), layer norms, softmax and the
    residual stream stay float32. Only the encoder: pooling and Dense run in float32."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder

    def __getattr__(self, name: str):
        return getattr(self.encoder, name)

    def __call__(self, *args, **kwargs):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.encoder(*args, **kwargs)


class RuntimeEncoder:
    """Stands in for transformers' module inside our Transformer stage: token ids and mask in,
    ``last_hidden_state`` out, computed by an ONNX Runtime session or an OpenVINO compiled
    model chosen by the current thread count."""

    def __init__(self, config, runners: dict[int, Callable[[np.ndarray, np.ndarray], np.ndarray]]):
        self.config = config
        self.runners = runners
        self.threads = max(runners)

    def __call__(self, input_ids, attention_mask=None):
        import torch

        ids = input_ids.numpy()
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.numpy()
        hidden = self.runners[self.threads](ids, mask.astype(np.int64))
        return SimpleNamespace(last_hidden_state=torch.from_numpy(np.asarray(hidden)))


def export_onnx(module, folder: Path, name: str) -> Path:
    """ONNX export of an encoder forward ``(input_ids, attention_mask) -> hidden states``,
    batch and length dynamic: torch's dynamo exporter, else its TorchScript one; checked
    against the module on a padded batch of another shape (real tokens within 1e-4)."""
    import onnxruntime as ort
    import torch

    target = folder / f"{name}.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    # A padded example, so that the mask is traced as data rather than skipped as all ones.
    ids = torch.full((2, 16), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["hidden"]}
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=4096)
    attempts = {
        "dynamo": {
            "dynamo": True,
            "dynamic_shapes": {
                "input_ids": {0: batch, 1: length},
                "attention_mask": {0: batch, 1: length},
            },
        },
        "torchscript": {
            "dynamo": False,
            "dynamic_axes": {
                key: {0: "batch", 1: "length"} for key in ("input_ids", "attention_mask", "hidden")
            },
        },
    }
    check_ids = torch.randint(1000, 3000, (3, 23))
    check_mask = torch.ones_like(check_ids)
    check_mask[0, 11:] = 0
    check_mask[2, 20:] = 0
    expected = module(check_ids, check_mask).detach().numpy()
    keep = check_mask.numpy().astype(bool)
    failures = []
    for exporter, options in attempts.items():
        try:
            torch.onnx.export(module, (ids, mask), str(target), verbose=False, **names, **options)
            session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            got = session.run(
                None, {"input_ids": check_ids.numpy(), "attention_mask": check_mask.numpy()}
            )[0]
        except Exception as exc:
            failures.append(f"{exporter}: {str(exc).splitlines()[0][:160]}")
            continue
        difference = float(np.abs(got - expected)[keep].max())
        if difference <= 1e-4:
            print(f"ONNX export ({exporter} exporter), max abs difference {difference:.1e}")
            return target
        failures.append(f"{exporter}: max abs difference {difference:.2e} on a padded batch")
    raise RuntimeError("; ".join(failures))


def encoder_function(model):
    """The loaded encoder as a module ``(input_ids, attention_mask) -> hidden states``: our
    fast forward for T5 (transformers' T5 does not go through the dynamo exporter), else
    transformers' module."""
    import torch

    from sk_instructor._engine.t5_encoder import FastT5Encoder

    encoder = model.transformer.encoder
    if model.model_type in ("t5", "mt5") and not isinstance(encoder, FastT5Encoder):
        encoder = FastT5Encoder.from_transformers(encoder)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            if isinstance(self.encoder, FastT5Encoder):
                # The bias of each width is computed in the graph: a table cached by an
                # earlier call would be exported as a constant of its width.
                self.encoder._bias_table = None
                hidden = self.encoder(input_ids, attention_mask)
                self.encoder._bias_table = None
                return hidden
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]

    return Wrapped().eval()


def runtime_rows(path: Path, name: str, args, threads: list[int]) -> list[Row]:
    """Our engine with the encoder forward run by ONNX Runtime / OpenVINO (when importable)."""
    import torch

    from sk_instructor._engine.checkpoint import resolve_model
    from sk_instructor._engine.model import EmbeddingModel

    def engine_with(runners) -> EmbeddingModel:
        model = EmbeddingModel(
            resolve_model(str(path)), device="cpu", dtype="float32", implementation="transformers"
        )
        encoder = RuntimeEncoder(model.transformer.encoder.config, runners)
        model.transformer.encoder = encoder
        return model, encoder

    def row(label: str, runners) -> Row:
        model, encoder = engine_with(runners)

        def encode(texts: list[str], n_threads: int) -> np.ndarray:
            encoder.threads = n_threads
            # One batch at a time: the runtime's session / compiled model takes the threads
            # itself, as it would as a backend of its own.
            with streams_capped("1"):
                return model.encode([INSTRUCTION] * len(texts), texts, cache=None)

        return Row(label, encode)

    rows: list[Row] = []
    if importlib.util.find_spec("onnxruntime") is None:
        print("skip ONNX Runtime / OpenVINO rows: the ONNX export and its check need onnxruntime")
        return rows
    source = EmbeddingModel(
        resolve_model(str(path)), device="cpu", dtype="float32", implementation="transformers"
    )
    start = time.perf_counter()
    try:
        with torch.inference_mode(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_path = export_onnx(encoder_function(source), Path(args.work_dir) / "onnx", name)
    except Exception as exc:
        print(f"skip ONNX Runtime / OpenVINO rows on {name}: export failed: {exc!r:.300}")
        return rows
    print(f"ONNX export of {name}: {onnx_path} ({time.perf_counter() - start:.1f} s)")
    del source

    import onnxruntime as ort

    def ort_runners(model_file: Path) -> dict[int, Callable]:
        runners = {}
        for n in threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads = n
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(
                str(model_file), options, providers=["CPUExecutionProvider"]
            )
            runners[n] = lambda ids, mask, session=session: session.run(
                None, {"input_ids": ids, "attention_mask": mask}
            )[0]
        return runners

    rows.append(row("ORT float32 [engine]", ort_runners(onnx_path)))
    if args.int8:
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_path = onnx_path.with_name(f"{name}.int8.onnx")
            quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
            rows.append(row("ORT dynamic int8 [engine]", ort_runners(int8_path)))
        except Exception as exc:
            print(f"skip ORT int8: {exc!r:.300}")

    try:
        import openvino as ov
    except ImportError as exc:
        print(f"skip OpenVINO rows: {exc} (pip install openvino)")
    else:
        core = ov.Core()
        network = core.read_model(str(onnx_path))
        for hint in (None, "f32"):
            runners = {}
            used = None
            for n in threads:
                config = {"INFERENCE_NUM_THREADS": n, "PERFORMANCE_HINT": "LATENCY"}
                if hint:
                    config["INFERENCE_PRECISION_HINT"] = hint
                compiled = core.compile_model(network, "CPU", config)
                used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
                request = compiled.create_infer_request()
                runners[n] = lambda ids, mask, request=request: request.infer(
                    {"input_ids": ids, "attention_mask": mask}
                )[0]
            kind = " (default hint)" if hint is None else ""
            rows.append(row(f"OpenVINO {used}{kind} [engine]", runners))
    return rows


def st_rows(path: Path, model_type: str) -> list[Row]:
    import torch
    from sentence_transformers import SentenceTransformer

    rows = []
    for backend in ("torch", "onnx", "openvino"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                st = SentenceTransformer(str(path), device="cpu", backend=backend)
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            print(f"skip ST {backend}: {message[:200]}")
            continue
        st.set_pooling_include_prompt(False)

        def encode(texts: list[str], n_threads: int, st=st) -> np.ndarray:
            torch.set_num_threads(n_threads)
            vectors = st.encode(
                texts,
                prompt=INSTRUCTION,
                batch_size=32,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return np.asarray(vectors, dtype=np.float32)

        rows.append(Row(f"ST {backend} float32", encode))
    return rows


def vectorizer_row(label: str, path: Path, texts: list[str], **params) -> Row:
    """A row through the public API: an ``InstructorVectorizer`` fitted once (the model loaded
    and, for OpenVINO, converted before timing), each timed call a ``transform``."""
    import torch

    from sk_instructor import InstructorVectorizer

    vectorizer = InstructorVectorizer(
        path, instruction=INSTRUCTION, device="cpu", cache=None, **params
    ).fit(texts[:1])

    def encode(texts: list[str], n_threads: int) -> np.ndarray:
        torch.set_num_threads(n_threads)
        return vectorizer.transform(texts)

    return Row(label, encode)


def our_rows(path: Path, model_type: str, args, threads: list[int], texts: list[str]) -> list[Row]:
    import torch

    from sk_instructor._engine.checkpoint import resolve_model
    from sk_instructor._engine.model import EmbeddingModel
    from sk_instructor._engine.registry import get_model

    float32 = torch_row("ours float32", get_model(path, device="cpu", dtype="float32"))
    bfloat16 = torch_row("ours bfloat16", get_model(path, device="cpu", dtype="bfloat16"))
    rows = [float32, one_stream(float32), bfloat16, one_stream(bfloat16)]
    if importlib.util.find_spec("openvino") is None:
        print('skip ours openvino rows: pip install "sk-instructor[openvino]"')
    else:
        for dtype, short in (("float32", "f32"), ("bfloat16", "bf16")):
            start = time.perf_counter()
            row = vectorizer_row(
                f"ours openvino {short}", path, texts, backend="openvino", dtype=dtype
            )
            print(f"{row.label}: loaded and converted in {time.perf_counter() - start:.1f} s")
            rows += [row, one_stream(row)]
    if model_type == "t5":
        model = get_model(path, device="cpu", dtype="bfloat16", implementation="transformers")
        rows.append(torch_row("ours bfloat16 transformers", model))
    top = (max(threads),)
    implementations = ("transformers", "fast") if model_type == "t5" else ("transformers",)
    for implementation in implementations:
        model = EmbeddingModel(
            resolve_model(str(path)), device="cpu", dtype="float32", implementation=implementation
        )
        model.transformer.encoder = AutocastEncoder(model.transformer.encoder)
        suffix = " fast" if implementation == "fast" else ""
        rows.append(torch_row(f"ours autocast-bf16{suffix} [bench]", model))
    if model_type == "t5":
        for dtype in ("float32", "bfloat16"):
            model = get_model(path, device="cpu", dtype=dtype, implementation="fast")
            rows.append(torch_row(f"ours {dtype} fast", model))
        if args.compile:
            model = EmbeddingModel(
                resolve_model(str(path)),
                device="cpu",
                dtype="bfloat16",
                implementation="fast",
                compile=True,
            )
            model.transformer.encoder.dynamic_width = True
            rows.append(torch_row("ours bfloat16 fast+compile", model, top))
    elif args.compile:
        model = EmbeddingModel(resolve_model(str(path)), device="cpu", dtype="bfloat16")
        model.transformer.encoder = torch.compile(model.transformer.encoder, dynamic=True)
        rows.append(torch_row("ours bf16 + torch.compile [bench]", model, top))
    return rows


# -- timing -----------------------------------------------------------------------------------
class BusyCore:
    """One core kept busy by a child process for the duration of a ``with`` block."""

    def __enter__(self) -> BusyCore:
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()


def time_rows(rows: list[Row], texts: list[str], threads: list[int], loads, repeats: int) -> None:
    for load in loads:
        with BusyCore() if load == "busy" else contextlib.nullcontext():
            for n in threads:
                active = [row for row in rows if row.runs_at(n)]
                for row in active:  # warm-up (and compilation) on every length once
                    if n in row.first_call:
                        continue
                    start = time.perf_counter()
                    row.outputs[n] = row.encode(texts, n)
                    row.first_call[n] = time.perf_counter() - start
                for repeat in range(repeats):
                    shift = repeat % len(active)
                    line = []
                    for row in active[shift:] + active[:shift]:
                        start = time.perf_counter()
                        row.encode(texts, n)
                        elapsed = time.perf_counter() - start
                        row.seconds.setdefault((load, n), []).append(elapsed)
                        row.loadavg.setdefault((load, n), []).append(os.getloadavg()[0])
                        line.append(f"{row.label} {elapsed:.2f}")
                    print(
                        f"  [{load}, {n} thread(s)] repeat {repeat + 1}/{repeats} "
                        f"(load {os.getloadavg()[0]:.1f}): " + "; ".join(line),
                        flush=True,
                    )


def report(name: str, rows: list[Row], texts: list[str], n_tokens: int, loads, threads) -> None:
    reference = rows[0]
    print(
        f"\n{name}: {len(texts)} texts, {n_tokens} tokens ({n_tokens / len(texts):.1f} per "
        f"text, instruction included)"
    )
    header = (
        f"| {'row':<38} | thr | load | texts/s | tokens/s | x ours fp32 | max abs   | "
        f"min cosine | loadavg |"
    )
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for load in loads:
        for n in threads:
            for row in rows:
                key = (load, n)
                if key not in row.seconds:
                    continue
                seconds = np.array(row.seconds[key])
                ratio = np.median(np.array(reference.seconds[key]) / seconds)
                ref = reference.outputs.get(n)
                out = row.outputs[n]
                if row is reference:
                    fidelity = f"{'(ref)':<9} | {'(ref)':<10}"
                else:
                    cos = cosine_rows(out, ref).min()
                    fidelity = f"{np.abs(out - ref).max():<9.2e} | {cos:<10.6f}"
                median = float(np.median(seconds))
                print(
                    f"| {row.label:<38} | {n:>3} | {load:<4} | {len(texts) / median:>7.1f} | "
                    f"{n_tokens / median:>8.0f} | {ratio:>11.2f} | {fidelity} | "
                    f"{np.mean(row.loadavg[key]):>7.1f} |"
                )
    compiled = [row for row in rows if row.first_call]
    print(
        "first call (warm-up; compilation where compiled), s: "
        + ", ".join(
            f"{row.label} " + "/".join(f"{row.first_call[n]:.1f}" for n in sorted(row.first_call))
            for row in compiled
        )
    )


def runtime_versions() -> str:
    versions = []
    for name in ("onnxruntime", "openvino"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            versions.append(f"{name} not installed")
        else:
            versions.append(f"{name} {module.__version__.split('-')[0]}")
    return ", ".join(versions)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm", help="minilm, t5-base, t5-tiny (comma list)")
    parser.add_argument("--n-texts", type=int, default=600, help="texts for MiniLM")
    parser.add_argument("--t5-texts", type=int, default=120, help="texts for the T5 models")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--loads", default="idle", help="idle and/or busy (one core kept busy)")
    parser.add_argument("--rows", help="only rows whose label contains one of these (comma list)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--int8", action="store_true", help="add ONNX Runtime dynamic int8")
    parser.add_argument("--work-dir", default="/tmp/sk_instructor_bench")
    args = parser.parse_args(argv)
    threads = [int(n) for n in args.threads.split(",")]
    loads = args.loads.split(",")
    print("options:", " ".join(argv if argv is not None else sys.argv[1:]) or "(defaults)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("SK_INSTRUCTOR_MAX_LOADED_MODELS", "100")
    warnings.simplefilter("ignore")  # truncation, compile notes

    import torch
    import transformers
    from sentence_transformers import __version__ as st_version

    flags = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    features = [
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags
    ]
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"sentence-transformers {st_version}, {runtime_versions()}; "
        f"{os.cpu_count()} CPUs ({', '.join(features)}); "
        f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()}"
    )
    for name in args.models.split(","):
        path = model_path(name, args.work_dir)
        model_type = "t5" if name.startswith("t5") else "bert"
        texts = short_texts(args.t5_texts if model_type == "t5" else args.n_texts)
        print(f"\n== {name}: {path}", flush=True)
        rows = our_rows(path, model_type, args, threads, texts)
        rows += st_rows(path, model_type)
        rows += runtime_rows(path, name, args, threads)
        if args.rows:
            wanted = args.rows.split(",")
            rows = [rows[0]] + [r for r in rows[1:] if any(w in r.label for w in wanted)]
        from sk_instructor._engine.registry import get_model

        reference = get_model(path, device="cpu", dtype="float32")
        lengths = reference._tokenizer.tokenize(
            [INSTRUCTION] * len(texts), texts, reference.max_seq_length
        ).lengths
        time_rows(rows, texts, threads, loads, args.repeats)
        report(name, rows, texts, int(lengths.sum()), loads, threads)


if __name__ == "__main__":
    main()
