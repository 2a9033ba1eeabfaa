"""The fast T5 encoder forward computes what transformers' T5EncoderModel computes.

The reference is transformers' own module, built from the same random weights; the fast
forward takes those weights over (stacked projections) and must give the same last hidden
states on every real token, in float32 to 1e-5 (measured: 0 for ReLU blocks, ~5e-7 for
gated-GELU ones, whose tanh-GELU is written differently).
"""

from __future__ import annotations

import pytest
import torch
from transformers import MT5Config, MT5EncoderModel, T5Config, T5EncoderModel, UMT5Config
from transformers.models.t5.modeling_t5 import T5Attention

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


def _pair(config_class, model_class, keywords, *, seed: int = 0):
    torch.manual_seed(seed)
    settings = {"d_ff": 64, "num_layers": 2, "vocab_size": VOCAB, **keywords}
    reference = model_class(config_class(**settings)).eval()
    return reference, FastT5Encoder.from_transformers(reference)


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


@pytest.mark.parametrize(
    ("config_class", "model_class", "keywords"),
    [shape[1:] for shape in SHAPES],
    ids=[shape[0] for shape in SHAPES],
)
def test_fast_forward_equals_transformers_in_float32(config_class, model_class, keywords):
    reference, fast = _pair(config_class, model_class, keywords)
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


def test_padding_does_not_change_the_real_tokens():
    # The engine pads batches to bucketed widths, wider than their longest row.
    _, fast = _pair(T5Config, T5EncoderModel, SHAPES[0][3])
    with torch.inference_mode():
        ids, mask = _batch(LENGTHS)
        alone = [fast(ids[row : row + 1, :length]) for row, length in enumerate(LENGTHS)]
        wider = torch.nn.functional.pad(ids, (0, 13))
        padded = fast(wider, torch.nn.functional.pad(mask, (0, 13)))
    for row, length in enumerate(LENGTHS):
        torch.testing.assert_close(padded[row, :length], alone[row][0], atol=1e-6, rtol=0)


def test_bfloat16_forward_stays_close_to_float32():
    reference, _ = _pair(T5Config, T5EncoderModel, SHAPES[0][3])
    fast32 = FastT5Encoder.from_transformers(reference)
    fast16 = FastT5Encoder.from_transformers(reference.to(torch.bfloat16))
    with torch.inference_mode():
        ids, mask = _batch(LENGTHS)
        high, low = fast32(ids, mask)[mask], fast16(ids, mask)[mask]
    assert low.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(high, low.float(), dim=-1)
    # Per token (pooled embeddings average the noise further, see test_engine_fast_path.py).
    assert cosine.min() >= 0.999


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
