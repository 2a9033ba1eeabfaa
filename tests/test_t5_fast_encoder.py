"""The fast T5 encoder forward computes what transformers' T5EncoderModel computes.

The reference is transformers' own module, built from the same random weights; the fast
forward takes those weights over (stacked projections) and must give the same last hidden
states on every real token, in float32 to 1e-5 (measured: at most 1e-6, 0 at instructor-large's
shape), with padding kept out of attention either way the encoder can (in the keys, the
default, or in a per-batch mask). In bfloat16 it is close to float32 and to transformers'
bfloat16 module, not bit-equal to the latter (its RMS norm rounds once; see the test).

Run as a script, it prints the peak memory of one forward
(``python tests/test_t5_fast_encoder.py``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import MT5Config, MT5EncoderModel, T5Config, T5EncoderModel, UMT5Config
from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm

from sk_instructor._engine.t5_encoder import (
    FastT5Encoder,
    relative_position_buckets,
    unsupported_reason,
)

# (name, config class, model class, config keywords)
SHAPES = [
    ("tiny-relu", T5Config, T5EncoderModel, {"d_model": 32, "d_kv": 8, "num_heads": 4}),
    # instructor-large's layer shape (24 layers there; two are enough to chain layers).
    (
        "large-shaped",
        T5Config,
        T5EncoderModel,
        {"d_model": 1024, "d_kv": 64, "num_heads": 16, "d_ff": 4096},
    ),
    # T5 v1.1 / flan: gated-GELU, and heads x d_kv wider than d_model, as in t5-v1_1-xl.
    (
        "gated-gelu-wide-heads",
        T5Config,
        T5EncoderModel,
        {"d_model": 48, "d_kv": 16, "num_heads": 4, "feed_forward_proj": "gated-gelu"},
    ),
    ("mt5", MT5Config, MT5EncoderModel, {"d_model": 32, "d_kv": 8, "num_heads": 4}),
]
VOCAB = 50
# Real lengths of a padded batch: full width, shorter rows, a single-token row.
LENGTHS = [19, 12, 1, 17]
TOLERANCE = 1e-5
# The two ways the encoder keeps padded keys out of attention (FastT5Encoder's padding_in_keys).
PADDINGS = ["keys", "mask"]


def _pair(config_class, model_class, keywords, *, seed: int = 0, padding: str = "keys"):
    torch.manual_seed(seed)
    settings = {"d_ff": 64, "num_layers": 2, "vocab_size": VOCAB, **keywords}
    reference = model_class(config_class(**settings)).eval()
    fast = FastT5Encoder.from_transformers(reference, padding_in_keys=padding == "keys")
    return reference, fast


def _trained_norms(model, *, seed: int = 0):
    """Layer-norm weights away from 1, as in trained checkpoints (a random T5 has all ones,
    which hides where the RMS norm rounds)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, T5LayerNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
    return model


def _allocations(function) -> tuple[int, int]:
    """Run ``function()`` on the CPU; returns the peak bytes torch held at once during it
    (counting from 0 when it starts) and its largest single allocation, from the profiler's
    record of every allocation and release (``[memory]`` events: + bytes, - bytes)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    events = sorted(
        (
            event
            for event in profiler.profiler.kineto_results.events()
            if event.name() == "[memory]"
        ),
        key=lambda event: event.start_ns(),
    )
    live = peak = largest = 0
    for event in events:
        live += event.nbytes()
        peak, largest = max(peak, live), max(largest, event.nbytes())
    return peak, largest


def _batch(lengths, *, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(2, VOCAB, (len(lengths), width), generator=generator)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, 0), mask


@pytest.mark.parametrize("length", [1, 2, 17, 130, 600])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (16, 40)])
def test_position_buckets_equal_transformers(length, num_buckets, max_distance):
    positions = torch.arange(length)
    expected = T5Attention._relative_position_bucket(
        positions[None, :] - positions[:, None],
        bidirectional=True,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    got = relative_position_buckets(length, num_buckets=num_buckets, max_distance=max_distance)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize(
    ("config_class", "model_class", "keywords"),
    [shape[1:] for shape in SHAPES],
    ids=[shape[0] for shape in SHAPES],
)
def test_fast_forward_equals_transformers_in_float32(config_class, model_class, keywords, padding):
    reference, fast = _pair(config_class, model_class, keywords, padding=padding)
    with torch.inference_mode():
        ids, mask = _batch(LENGTHS)
        expected = reference(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = fast(ids, mask)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        torch.testing.assert_close(got[mask], expected[mask], atol=TOLERANCE, rtol=0)
        # Without padding: no mask at all.
        ids, _ = _batch([LENGTHS[0]] * 3, seed=2)
        expected = reference(input_ids=ids).last_hidden_state
        torch.testing.assert_close(fast(ids), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("padding", PADDINGS)
def test_padding_does_not_change_the_real_tokens(padding):
    # The engine pads batches to bucketed widths, wider than their longest row.
    _, fast = _pair(T5Config, T5EncoderModel, SHAPES[0][3], padding=padding)
    with torch.inference_mode():
        ids, mask = _batch(LENGTHS)
        alone = [fast(ids[row : row + 1, :length]) for row, length in enumerate(LENGTHS)]
        wider = torch.nn.functional.pad(ids, (0, 13))
        padded = fast(wider, torch.nn.functional.pad(mask, (0, 13)))
    for row, length in enumerate(LENGTHS):
        torch.testing.assert_close(padded[row, :length], alone[row][0], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("config_class", "model_class", "keywords"),
    [shape[1:] for shape in SHAPES if shape[0] != "large-shaped"],
    ids=[shape[0] for shape in SHAPES if shape[0] != "large-shaped"],
)
def test_bfloat16_forward_stays_close_to_float32_and_to_transformers(
    config_class, model_class, keywords
):
    reference, _ = _pair(config_class, model_class, keywords)
    _trained_norms(reference)
    fast32 = FastT5Encoder.from_transformers(reference)
    reference16 = copy.deepcopy(reference).to(torch.bfloat16)
    fast16 = FastT5Encoder.from_transformers(copy.deepcopy(reference16))
    with torch.inference_mode():
        ids, mask = _batch(LENGTHS)
        high, low = fast32(ids, mask)[mask], fast16(ids, mask)[mask]
        theirs = reference16(input_ids=ids, attention_mask=mask.long()).last_hidden_state[mask]
    assert low.dtype == torch.bfloat16
    # Per token (pooled embeddings average the noise further, see test_engine_fast_path.py);
    # measured 0.9997 or more for both.
    for other in (high, theirs.float()):
        cosine = torch.nn.functional.cosine_similarity(other, low.float(), dim=-1)
        assert cosine.min() >= 0.999
    # Not bit-equal to transformers' bfloat16 module: the RMS norm rounds once (next test).
    assert not torch.equal(low, theirs)


def test_rms_norm_equals_transformers_in_float32_and_rounds_once_in_bfloat16():
    norm = _trained_norms(T5LayerNorm(64, eps=1e-6))
    values = torch.randn(8, 50, 64, generator=torch.Generator().manual_seed(0)) * 3
    ours = torch.nn.functional.rms_norm
    with torch.inference_mode():
        assert torch.equal(ours(values, (64,), norm.weight, 1e-6), norm(values))
        norm16, values16 = norm.to(torch.bfloat16), values.to(torch.bfloat16)
        theirs, fused = norm16(values16), ours(values16, (64,), norm16.weight, 1e-6)
        # transformers rounds the normalised values to bfloat16 before the weight multiplies
        # them; the fused norm applies the weight in float32 and rounds once.
        assert torch.equal(ours(values16, (64,), None, 1e-6) * norm16.weight, theirs)
    differs = fused != theirs
    assert 0.05 < differs.float().mean() < 0.5  # measured: about a quarter of the values
    # ... by one unit in the last place (bfloat16 keeps 8 bits of mantissa).
    ulp = torch.pow(2.0, torch.floor(torch.log2(theirs.float().abs())) - 7)
    assert ((fused.float() - theirs.float()).abs() <= ulp).all()


# -- padding and memory ----------------------------------------------------------------------
def test_attention_gets_one_position_bias_for_the_whole_batch(monkeypatch):
    # What each layer hands to scaled_dot_product_attention: with padding in the keys, a bias
    # of one row whose storage is heads x L x L, whatever the batch; in the mask, batch x that
    # (the check would see it come back).
    masks = []
    attention = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, *, attn_mask=None, **kwargs):
        masks.append((query.shape[0], attn_mask))
        return attention(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    ids, mask = _batch(LENGTHS)
    batch, length = ids.shape
    one_row = SHAPES[0][3]["num_heads"] * length * length * 4  # float32
    for padding, rows in (("keys", 1), ("mask", batch)):
        _, fast = _pair(T5Config, T5EncoderModel, SHAPES[0][3], padding=padding)
        masks.clear()
        with torch.inference_mode():
            fast(ids, mask)
        assert len(masks) == 2  # one per layer
        for query_rows, bias in masks:
            assert query_rows == batch and bias.shape[0] == rows
            assert bias.untyped_storage().nbytes() == rows * one_row


def test_a_forward_allocates_nothing_the_size_of_batch_x_heads_x_length_squared():
    # Many heads, a long width and a narrow model, so that a (batch, heads, L, L) tensor would
    # dwarf everything else: 8 x 8 x 512 x 512 float32 = 64 MiB. The largest tensor left is
    # the position bias that the batch shares, (1, heads, L, L): 8 MiB.
    shape = {"d_model": 32, "d_kv": 8, "num_heads": 8}
    reference, fast = _pair(T5Config, T5EncoderModel, shape, padding="keys")
    _, masked = _pair(T5Config, T5EncoderModel, shape, padding="mask")
    lengths = [512, 400, 17, 1, 512, 90, 256, 511]
    ids, mask = _batch(lengths)
    square = len(lengths) * 8 * 512 * 512 * 4
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = []
        _, largest = _allocations(lambda: got.append(fast(ids, mask)))
        _, largest_masked = _allocations(lambda: masked(ids, mask))
    torch.testing.assert_close(got[0][mask], expected[mask], atol=TOLERANCE, rtol=0)
    assert largest <= square // len(lengths)
    assert largest_masked >= square  # what the check guards against


@pytest.mark.parametrize(
    ("config", "dtype"),
    [
        (T5Config(feed_forward_proj="relu"), torch.float32),
        (T5Config(feed_forward_proj="gated-gelu"), torch.bfloat16),
        (MT5Config(), torch.float32),
    ],
    ids=["t5-relu-float32", "t5-gated-gelu-bfloat16", "mt5"],
)
def test_covered_encoders(config, dtype):
    assert unsupported_reason(config, dtype) is None


@pytest.mark.parametrize(
    ("config", "dtype", "reason"),
    [
        (T5Config(), torch.float16, "float16"),
        (T5Config(is_decoder=True), torch.float32, "decoder"),
        (T5Config(feed_forward_proj="gated-silu"), torch.float32, "silu"),
        # Per-layer position biases: not this forward's model.
        (UMT5Config(), torch.float32, "umt5"),
    ],
    ids=["float16", "decoder", "silu", "umt5"],
)
def test_uncovered_encoders_say_why(config, dtype, reason):
    assert reason in unsupported_reason(config, dtype)


def test_building_from_an_uncovered_model_fails():
    reference, _ = _pair(T5Config, T5EncoderModel, SHAPES[0][3])
    with pytest.raises(ValueError, match="float16"):
        FastT5Encoder.from_transformers(reference.to(torch.float16))


def _print_forward_memory() -> None:
    """Peak memory of one forward of two instructor-large-shaped layers (d_model 1024, 16
    heads, d_ff 4096), padding in the mask and in the keys, float32 and bfloat16."""
    torch.manual_seed(0)
    config = T5Config(d_model=1024, d_kv=64, num_heads=16, d_ff=4096, num_layers=2, vocab_size=100)
    reference = T5EncoderModel(config).eval()
    generator = torch.Generator().manual_seed(1)
    for rows, width in ((64, 512), (512, 64)):
        lengths = torch.randint(width // 2, width + 1, (rows,), generator=generator)
        lengths[0] = width
        ids = torch.randint(2, 100, (rows, width), generator=generator)
        mask = torch.arange(width)[None, :] < lengths[:, None]
        for dtype in (torch.float32, torch.bfloat16):
            for padding in PADDINGS:
                fast = FastT5Encoder.from_transformers(
                    reference.to(dtype), padding_in_keys=padding == "keys"
                )
                with torch.inference_mode():
                    peak, largest = _allocations(lambda: fast(ids, mask))  # noqa: B023
                print(
                    f"{rows} rows x {width}, {str(dtype).replace('torch.', '')}, padding in "
                    f"{padding}: peak {peak / 2**20:,.0f} MiB, largest tensor "
                    f"{largest / 2**20:,.0f} MiB"
                )


if __name__ == "__main__":
    _print_forward_memory()
