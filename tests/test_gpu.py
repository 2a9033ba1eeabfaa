"""On a CUDA GPU: the fast T5 forward, the engine around it, and its GPU-only paths.

Every test here needs CUDA and is skipped without it (the suite's machines have none, and the
torch they install is a CPU build); on a GPU machine, ``pytest -m gpu`` runs them. They check
what the CPU tests can only check by logic: the float32 engine against the published rules
(the reference runs on the CPU), bfloat16 against float32, padding kept out of attention by
CUDA's own kernels without a ``(batch, heads, L, L)`` tensor, out-of-memory halving on an
error raised by CUDA's allocator, and pinned-memory transfers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_instructor import ReferenceInstructor
from test_engine_fast_path import CASES, INSTRUCTION, TEXTS, _encode_quietly
from transformers import T5Config, T5EncoderModel

from sk_instructor._engine.checkpoint import resolve_model
from sk_instructor._engine.model import EmbeddingModel
from sk_instructor._engine.registry import get_model
from sk_instructor._engine.t5_encoder import FastT5Encoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("checkpoint", ["tiny", "large_shaped"])
def test_float32_on_cuda_equals_the_rules_reference(checkpoint, tiny_t5_path, large_shaped_path):
    folder = tiny_t5_path if checkpoint == "tiny" else large_shaped_path
    reference = ReferenceInstructor(folder)  # on the CPU
    expected = np.stack([reference.embed(i, t) for i, t in CASES])
    model = get_model(folder, device="cuda", dtype="float32")
    assert model.implementation == "fast"  # the CUDA default
    got = _encode_quietly(model, [i for i, _ in CASES], [t for _, t in CASES])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("checkpoint", ["tiny", "large_shaped"])
def test_bfloat16_on_cuda_stays_close_to_float32(checkpoint, tiny_t5_path, large_shaped_path):
    folder = tiny_t5_path if checkpoint == "tiny" else large_shaped_path
    low = get_model(folder, device="cuda")
    assert low.dtype == torch.bfloat16  # the CUDA default for T5
    high = get_model(folder, device="cuda", dtype="float32")
    instructions = [INSTRUCTION] * len(TEXTS)
    a, b = high.encode(instructions, TEXTS), low.encode(instructions, TEXTS)
    assert (a * b).sum(axis=1).min() >= 0.9999  # unit vectors: the dot is the cosine


def _large_shaped_encoders(dtype):
    torch.manual_seed(0)
    config = T5Config(d_model=1024, d_kv=64, num_heads=16, d_ff=4096, num_layers=2, vocab_size=100)
    reference = T5EncoderModel(config).eval().to(device="cuda", dtype=dtype)
    keys = FastT5Encoder.from_transformers(reference, padding_in_keys=True)
    mask = FastT5Encoder.from_transformers(reference, padding_in_keys=False)
    return reference, keys, mask


def _padded_batch(rows, width, *, seed=1):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    lengths[0] = width
    ids = torch.randint(2, 100, (rows, width), generator=generator)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    return ids.cuda(), mask.cuda()


@pytest.mark.parametrize("width", [19, 24, 130])  # unaligned and aligned widths
def test_cuda_kernels_keep_padding_out_of_attention(width):
    reference, keys, mask = _large_shaped_encoders(torch.float32)
    ids, attention = _padded_batch(6, width)
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=attention.long()).last_hidden_state
        for fast in (keys, mask):
            got = fast(ids, attention)
            torch.testing.assert_close(got[attention], expected[attention], atol=1e-5, rtol=0)


def test_cuda_forward_with_padding_in_the_keys_holds_no_batch_sized_bias():
    # 64 rows x 512 in bfloat16: a (batch, heads, L, L) bias would be 512 MiB.
    _, keys, mask = _large_shaped_encoders(torch.bfloat16)
    ids, attention = _padded_batch(64, 512)
    peaks, outputs = [], []
    with torch.inference_mode():
        for fast in (mask, keys):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            outputs.append(fast(ids, attention)[attention].float())
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() - before)
    square = 64 * 16 * 512 * 512 * 2
    assert peaks[1] <= peaks[0] - 0.75 * square, [peak / 2**20 for peak in peaks]
    cosine = torch.nn.functional.cosine_similarity(outputs[0], outputs[1], dim=-1)
    assert cosine.min() >= 0.999


def test_out_of_memory_from_cuda_halves_the_batch_and_loses_no_row(tiny_t5_path):
    instructions = [INSTRUCTION] * len(TEXTS)
    expected = get_model(tiny_t5_path, device="cuda", dtype="float32").encode(
        instructions, TEXTS, batch_size=1
    )
    model = EmbeddingModel(resolve_model(tiny_t5_path), device="cuda", dtype="float32")
    encoder = model.transformer.encoder
    real_forward = encoder.forward
    ran = []

    def forward(ids, mask):
        if ids.shape[0] > 4:
            # More than the GPU holds: CUDA's allocator raises its own out-of-memory error.
            torch.empty(1 << 50, dtype=torch.uint8, device="cuda")
        ran.append(ids.shape[0])
        return real_forward(ids, mask)

    encoder.forward = forward
    got = model.encode(instructions, TEXTS, token_budget=100_000)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sum(ran) == len(TEXTS) and max(ran) <= 4


def test_batches_reach_the_gpu_through_pinned_memory(tiny_t5_path, monkeypatch):
    model = EmbeddingModel(resolve_model(tiny_t5_path), device="cuda", dtype="float32")
    pinned = []
    real_pin = torch.Tensor.pin_memory

    def pin_memory(tensor, *args, **kwargs):
        result = real_pin(tensor, *args, **kwargs)
        pinned.append(result.is_pinned())
        return result

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    host = torch.arange(1000)
    on_device = model._to_device(host)
    assert on_device.device.type == "cuda" and pinned == [True]
    assert torch.equal(on_device.cpu(), host)
    # A whole call: every batch's ids, lengths and instruction lengths, pinned then copied.
    pinned.clear()
    instructions = [INSTRUCTION] * len(TEXTS)
    got = model.encode(instructions, TEXTS, cache=None)
    assert pinned and all(pinned)
    expected = get_model(tiny_t5_path, device="cpu", implementation="fast").encode(
        instructions, TEXTS
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_fine_tuning_on_cuda_trains_under_bfloat16_autocast_and_keeps_float32_fidelity(
    tiny_t5_path, tmp_path
):
    from sk_instructor import InstructorFineTuner

    texts = [
        "Parton energy loss in QCD matter",
        "Dark matter halos and galaxies",
        "The stock market fell after the tariffs",
        "Bonds rallied as rates dropped",
    ]
    tuner = InstructorFineTuner(
        tiny_t5_path,
        instruction=INSTRUCTION,
        device="cuda",
        random_state=0,
        pairs_per_text=4,
        output_dir=tmp_path / "tuned",
        cache=None,
    ).fit(texts, [0, 0, 1, 1])
    assert tuner.device_.startswith("cuda")
    # The saved checkpoint is float32 and obeys the published rules like any other.
    reference = ReferenceInstructor(tuner.model_path_)  # on the CPU, in float32
    expected = np.stack([reference.embed(INSTRUCTION, text) for text in texts])
    model = get_model(tuner.model_path_, device="cuda", dtype="float32")
    got = _encode_quietly(model, [INSTRUCTION] * len(texts), texts)
    np.testing.assert_allclose(got, expected, atol=1e-5)
