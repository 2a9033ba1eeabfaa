"""A T5 encoder forward written for inference: the INSTRUCTOR models' network, made fast.

transformers' ``T5EncoderModel`` serves every use of T5 (training, decoding, caches), and on a
GPU its encoder spends most of its time outside the matrix products: it adds the relative
position bias to the padding mask inside every layer, which sends attention to PyTorch's
unfused "math" kernel (half of all GPU time on an H200), and it casts between precisions in
every layer. This module computes the same network from the same weights, as an embedding
needs it:

- the relative position bias of a width is computed once, in the compute dtype, as one
  ``(1, heads, L, L)`` tensor that every row of every batch of that width shares: no
  ``(batch, heads, L, L)`` mask is built (:func:`encoder_layer` says how padding is kept out
  instead), and every layer hands ``scaled_dot_product_attention`` (scale 1: T5 does not scale
  its scores) one additive mask, which lets it take a fused kernel;
- the query, key and value projections are one matrix product (the two input projections of
  gated feed-forward blocks too);
- T5's layer norm is an RMS norm whose variance is computed in float32 whatever the compute
  dtype, as transformers does, in one ``torch.nn.functional.rms_norm``, which multiplies by the
  weight in float32 and rounds once; transformers rounds the normalised values to the compute
  dtype first, then multiplies them by the weight in it. In bfloat16 the two differ by one unit
  in the last place on about a quarter of the values (in float32 they are equal);
- the residual stream stays in the compute dtype, as in transformers.

What "the same" means, each by a test in ``tests/test_t5_fast_encoder.py``: in float32 the last
hidden states equal transformers' to 1e-5 (measured: at most 1e-6; 0 at instructor-large's
shape); in bfloat16 they are not bit-equal to transformers' bfloat16 module (the norm's
rounding, attention kernels with other blocking) but within a per-token cosine of 0.999 of it
and of float32 (measured: 0.9997 or more on random weights).

One layer is one function of tensors (:func:`encoder_layer`), the same for every layer, so that
``torch.compile`` compiles it once per input width and reuses it for all 24 layers: a
24th of the graph that compiling the whole network traces (30-40 s per shape on an H200).

Covered: T5 and mT5 encoders with ReLU (T5 v1.0, INSTRUCTOR) or gated-GELU (T5 v1.1, mT5)
feed-forward blocks, in float32 or bfloat16 (:func:`unsupported_reason`). Everything else runs
transformers' module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["FastT5Encoder", "encoder_layer", "relative_position_buckets", "unsupported_reason"]

# transformers' ``dense_act_fn`` names -> the same function.
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
}
_MODEL_TYPES = ("t5", "mt5")
_DTYPES = (torch.float32, torch.bfloat16)
# torch.compile recompiles per padded width; its default limit of 8 recompilations per function
# would send the remaining widths back to eager code.
_RECOMPILE_LIMIT = 64
# Compile the padded width as a dynamic dimension too (one graph for every width) instead of
# one graph per width. Fewer compilations, possibly slower kernels: a whole-model dynamic
# compile was measured at 34% MFU against 40% static; benchmarks/gpu_steady_state.py measures
# both for this per-layer compile (paths "compiled" and "compiled-dynamic").
_DYNAMIC_WIDTH = False
# How padded keys are kept out of attention. True: in the keys (see encoder_layer), so that the
# position bias stays one (1, heads, L, L) tensor that the whole batch shares. False: folded into
# the bias, one (batch, heads, L, L) additive mask per batch that every layer reads: 1 GiB in
# bfloat16 at the CUDA default budget of 65,536 tokens as 128 rows x 512. Measured on the CPU,
# one forward of two instructor-large-shaped layers, bfloat16, peak of what torch allocates
# (`python tests/test_t5_fast_encoder.py`): 64 rows x 512, 1,480 MiB with the mask, 992 MiB in
# the keys; 512 rows x 64, 1,024 and 984 MiB. The keys cost 8 zero rows per head in the
# query, key and value projections (+12.5% of that matrix product, ~3% of a layer's FLOPs) and
# heads 72 wide instead of 64, which on CUDA moves the memory-efficient kernel from its 64-wide
# variant to its 128-wide one: what that costs against reading the mask is for
# benchmarks/gpu_check.sh to measure (not yet). Read when an encoder is built.
_PADDING_IN_KEYS = True
# Columns added to each head when padding is in the keys: one carries the padding, the others
# keep the head width a multiple of 8, which CUDA's fused attention kernels need.
_PADDING_COLUMNS = 8
# The score of a padded key: exp() of it minus any real score is exactly 0 in float32 and
# bfloat16 (as with transformers' mask, the dtype's lowest value), and it stays finite when a
# kernel scales it (by log2(e) before an exp2), so no row of scores turns into NaN.
_PADDED_KEY_SCORE = -(2.0**64)
# The attention kernels in order of preference. Flash attention takes no additive mask, so on a
# GPU the choice is between the memory-efficient and the cuDNN kernel: on an H200, 512 rows x 16
# heads x 64 x 64 with a (batch, heads, L, L) bfloat16 bias took 138 us in the efficient kernel,
# 226 us in cuDNN's, 1,352 us in the unfused math one. On a CPU, flash attention is
# the fused kernel; it reads a (1, heads, L, L) bias for every row without copying it.
_ATTENTION_BACKENDS = [
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.MATH,
]


def unsupported_reason(config: Any, dtype: torch.dtype) -> str | None:
    """Why :class:`FastT5Encoder` does not cover this encoder, or ``None``.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The checkpoint's config.
    dtype : torch.dtype
        The compute dtype. float16 is left to transformers, which clamps infinite activations
        in float16 only (T5 overflows it; the default on GPUs is bfloat16).
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {_MODEL_TYPES}"
    if getattr(config, "is_decoder", False):
        return "the config describes a decoder"
    activation = getattr(config, "dense_act_fn", None)
    if activation not in _ACTIVATIONS:
        return f"feed-forward activation {activation!r} is not one of {sorted(_ACTIVATIONS)}"
    if dtype not in _DTYPES:
        return f"dtype {dtype} (float32 and bfloat16 are covered)"
    return None


def relative_position_buckets(
    length: int, *, num_buckets: int, max_distance: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """T5's bidirectional relative position bucket of every (query, key) pair: ``(L, L)`` int64.

    Half the buckets hold keys after the query, half keys before; within each half, distances
    below a quarter of ``num_buckets`` get a bucket each, longer ones share logarithmically wider
    buckets up to ``max_distance``, and all farther ones the last bucket (Mesh TensorFlow's
    rule, as T5 was trained).
    """
    positions = torch.arange(length, dtype=torch.long, device=device)
    distance = positions[None, :] - positions[:, None]  # key - query
    half = num_buckets // 2
    buckets = (distance > 0).long() * half
    distance = distance.abs()
    exact = half // 2
    # The same float32 operations in the same order as the published code, so that the
    # truncation to an integer lands in the same bucket at every distance.
    logarithmic = exact + (
        torch.log(distance.float() / exact) / math.log(max_distance / exact) * (half - exact)
    ).to(torch.long)
    logarithmic = logarithmic.clamp(max=half - 1)
    return buckets + torch.where(distance < exact, distance, logarithmic)


def encoder_layer(
    hidden: torch.Tensor,
    attention_bias: torch.Tensor,
    key_padding: torch.Tensor | None,
    attention_norm: torch.Tensor,
    qkv: torch.Tensor,
    attention_out: torch.Tensor,
    feed_forward_norm: torch.Tensor,
    feed_forward_in: torch.Tensor,
    feed_forward_out: torch.Tensor,
    *,
    n_heads: int,
    eps: float,
    activation: Callable[[torch.Tensor], torch.Tensor],
    gated: bool,
) -> torch.Tensor:
    """One T5 encoder layer: self-attention then feed-forward, each pre-normed and residual.

    Every weight is an argument, so one compiled version of this function serves every layer.

    Padded keys are kept out of attention in one of two ways. With ``key_padding``, through the
    keys themselves: ``qkv`` gives each head extra columns (zero rows of the weight), and the
    first of them is set to 1 in the queries and to ``key_padding`` in the keys, so that every
    score gains its key's ``key_padding`` (0 for a real token, :data:`_PADDED_KEY_SCORE` for
    padding) inside the attention kernel's own product; the values' extra columns stay 0, and
    are dropped from the output. The position bias is then one ``(1, n_heads, L, L)`` tensor
    for the whole batch. Without it, the padding must already be in ``attention_bias``.

    Parameters
    ----------
    hidden : Tensor of shape (batch, length, d_model)
        The residual stream, in the compute dtype.
    attention_bias : Tensor of shape (1 or batch, n_heads, length, length)
        Relative position bias, in the compute dtype; with ``key_padding=None``, padded keys
        (if any) at the dtype's lowest value.
    key_padding : Tensor of shape (batch, length, 1), or None
        The score added to each key: 0 or :data:`_PADDED_KEY_SCORE`, in the compute dtype.
        ``None``: the batch has no padding, or ``attention_bias`` holds it.
    attention_norm, feed_forward_norm : Tensor of shape (d_model,)
        The RMS norms' weights.
    qkv : Tensor of shape (3 * n_heads * (d_kv + extra), d_model)
        Query, key and value projections stacked, each head followed by ``extra`` zero rows
        (:data:`_PADDING_COLUMNS`, or 0 for an encoder that keeps padding in the bias).
    attention_out : Tensor of shape (d_model, n_heads * d_kv)
    feed_forward_in : Tensor of shape (d_ff, d_model), or (2 * d_ff, d_model) when gated
        (the activated projection first, the linear one second).
    feed_forward_out : Tensor of shape (d_model, d_ff)
    n_heads : int
    eps : float
        The RMS norms' epsilon.
    activation : callable
        The feed-forward activation.
    gated : bool
        Whether the feed-forward block is gated (T5 v1.1, mT5).

    Returns
    -------
    Tensor of shape (batch, length, d_model)
        The residual stream after the layer.
    """
    batch, length, width = hidden.shape
    head_width = attention_out.shape[1] // n_heads
    normed = F.rms_norm(hidden, (width,), attention_norm, eps)
    heads = F.linear(normed, qkv).view(batch, length, 3, n_heads, -1)
    if key_padding is None:
        # Nothing to keep out: the heads without their extra columns (a view).
        heads = heads[..., :head_width]
    else:
        # Written into the projection's own output: no copy of the heads is made.
        heads[:, :, 0, :, head_width] = 1.0
        heads[:, :, 1, :, head_width] = key_padding
    query, key, value = heads.permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_bias, scale=1.0
    )
    attended = attended[..., :head_width].transpose(1, 2).reshape(batch, length, -1)
    hidden = hidden + F.linear(attended, attention_out)
    normed = F.rms_norm(hidden, (width,), feed_forward_norm, eps)
    inner = F.linear(normed, feed_forward_in)
    if gated:
        activated, linear = inner.chunk(2, dim=-1)
        inner = activation(activated) * linear
    else:
        inner = activation(inner)
    return hidden + F.linear(inner, feed_forward_out)


class _Layer(torch.nn.Module):
    """The weights of one layer, as :func:`encoder_layer` takes them.

    ``qkv`` is the query, key and value projections stacked, ``(3 * n_heads * d_kv, d_model)``;
    ``extra`` zero rows are inserted after each head's (see :func:`encoder_layer`).
    """

    def __init__(
        self, attention_norm, qkv, attention_out, ff_norm, ff_in, ff_out, *, n_heads, extra
    ) -> None:
        super().__init__()
        self.attention_norm = _frozen(attention_norm)
        if extra:
            per_head = qkv.view(3, n_heads, -1, qkv.shape[-1])
            qkv = F.pad(per_head, (0, 0, 0, extra)).flatten(0, 2)
        self.qkv = _linear(qkv)
        self.attention_out = _linear(attention_out)
        self.feed_forward_norm = _frozen(ff_norm)
        self.feed_forward_in = _linear(ff_in)
        self.feed_forward_out = _linear(ff_out)

    def weights(self) -> tuple[torch.Tensor, ...]:
        return (
            self.attention_norm,
            self.qkv.weight,
            self.attention_out.weight,
            self.feed_forward_norm,
            self.feed_forward_in.weight,
            self.feed_forward_out.weight,
        )


class FastT5Encoder(torch.nn.Module):
    """The encoder of a T5 checkpoint, for inference: token ids in, last hidden states out.

    Build it with :meth:`from_transformers` from a loaded ``T5EncoderModel`` (or
    ``MT5EncoderModel``); it takes over that model's weights (the projections of each layer
    stacked into one matrix) and its ``config``.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The checkpoint's config (kept as ``.config``, as transformers' models have it).
    embedding : Tensor of shape (vocab_size, d_model)
    position_table : Tensor of shape (num_buckets, n_heads)
        Layer 0's relative attention bias, shared by every layer.
    layers : list of _Layer
    final_norm : Tensor of shape (d_model,)
    compile : bool
        Run each layer through ``torch.compile``: one compilation per padded width (the batch
        dimension is dynamic), reused by every layer and, through inductor's on-disk cache, by
        later processes.
    padding_in_keys : bool
        Whether padded keys are kept out of attention through the keys (the layers' ``qkv``
        then has :data:`_PADDING_COLUMNS` zero rows per head) or through a per-batch
        ``(batch, heads, L, L)`` bias (see :func:`encoder_layer`).
    """

    def __init__(
        self,
        config: Any,
        *,
        embedding: torch.Tensor,
        position_table: torch.Tensor,
        layers: list[_Layer],
        final_norm: torch.Tensor,
        compile: bool = False,
        padding_in_keys: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.embedding = _frozen(embedding)
        self.position_table = _frozen(position_table)
        self.layers = torch.nn.ModuleList(layers)
        self.final_norm = _frozen(final_norm)
        self.n_heads = int(config.num_heads)
        self.eps = float(config.layer_norm_epsilon)
        self.num_buckets = int(config.relative_attention_num_buckets)
        self.max_distance = int(config.relative_attention_max_distance)
        self.gated = bool(getattr(config, "is_gated_act", False))
        self.activation = _ACTIVATIONS[config.dense_act_fn]
        self.compiled = bool(compile)
        self.dynamic_width = _DYNAMIC_WIDTH
        self.padding_in_keys = bool(padding_in_keys)
        self._layer = _compiled_layer() if compile else encoder_layer
        self._bias_table: torch.Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.dtype

    @classmethod
    def from_transformers(
        cls, model: Any, *, compile: bool = False, padding_in_keys: bool | None = None
    ) -> FastT5Encoder:
        """Build from a loaded transformers T5 encoder, on its device and in its dtype.

        ``padding_in_keys=None`` takes the module's default (:data:`_PADDING_IN_KEYS`).
        """
        if padding_in_keys is None:
            padding_in_keys = _PADDING_IN_KEYS
        extra = _PADDING_COLUMNS if padding_in_keys else 0
        config = model.config
        reason = unsupported_reason(config, model.dtype)
        if reason is not None:
            raise ValueError(f"the fast T5 encoder does not cover this model: {reason}.")
        stack = model.encoder
        layers = []
        for index, block in enumerate(stack.block):
            attention = block.layer[0].SelfAttention
            if index > 0 and attention.has_relative_attention_bias:
                raise ValueError("the fast T5 encoder needs one relative position bias (layer 0).")
            feed_forward = block.layer[-1].DenseReluDense
            if hasattr(feed_forward, "wi_0"):
                ff_in = torch.cat([feed_forward.wi_0.weight, feed_forward.wi_1.weight])
            else:
                ff_in = feed_forward.wi.weight
            layers.append(
                _Layer(
                    block.layer[0].layer_norm.weight,
                    torch.cat([attention.q.weight, attention.k.weight, attention.v.weight]),
                    attention.o.weight,
                    block.layer[-1].layer_norm.weight,
                    ff_in,
                    feed_forward.wo.weight,
                    n_heads=int(config.num_heads),
                    extra=extra,
                )
            )
        return cls(
            config,
            embedding=stack.embed_tokens.weight,
            position_table=stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight,
            layers=layers,
            final_norm=stack.final_layer_norm.weight,
            compile=compile,
            padding_in_keys=padding_in_keys,
        )

    def position_bias(self, length: int) -> torch.Tensor:
        """The relative position bias of a width: ``(1, n_heads, L, L)`` in the compute dtype.

        It depends on key - query only, so the bias of any width is the top-left corner of a
        wider one: one table, as wide as the widest batch so far, serves every width.
        """
        table = self._bias_table
        if table is None or table.shape[-1] < length:
            buckets = relative_position_buckets(
                length,
                num_buckets=self.num_buckets,
                max_distance=self.max_distance,
                device=self.embedding.device,
            )
            table = F.embedding(buckets, self.position_table).permute(2, 0, 1).unsqueeze(0)
            table = table.contiguous()
            # CPU streams compute batches at once: a narrower table made meanwhile by another
            # stream must not replace a wider one (each call uses its own local table).
            current = self._bias_table
            if current is None or current.shape[-1] < table.shape[-1]:
                self._bias_table = table
        if table.shape[-1] == length:
            return table
        return table[:, :, :length, :length].contiguous()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last hidden states ``(batch, length, d_model)`` in the compute dtype.

        ``attention_mask`` (bool or 0/1, ``(batch, length)``) marks the real tokens; ``None``
        means no padding. Padded positions get vectors too (pooling ignores them).
        """
        if self.compiled and input_ids.shape[0] == 1:
            # A one-row batch would be compiled apart (torch specializes sizes of 1): run it
            # as two copies of itself through the graph every other batch size uses.
            mask = None if attention_mask is None else attention_mask.expand(2, -1)
            return self.forward(input_ids.expand(2, -1), mask)[:1]
        batch, length = input_ids.shape
        bias = self.position_bias(length)
        key_padding = None
        if self.padding_in_keys:
            if attention_mask is None and self.compiled:
                # One compiled graph per width: a batch without padding takes the same one.
                attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is not None:
                key_padding = self.key_padding(attention_mask)
        elif attention_mask is not None:
            # Padding folded into the bias once for all layers: the lowest finite value, as
            # transformers uses, so a row of padding alone would still give finite numbers.
            keep = attention_mask.bool()[:, None, None, :]
            bias = torch.where(keep, bias, torch.finfo(bias.dtype).min)
        elif self.compiled:
            # One compiled graph per width: the bias always has a batch dimension.
            bias = bias.expand(batch, -1, -1, -1).contiguous()
        hidden = F.embedding(input_ids, self.embedding)
        if self.compiled:
            # Rows per batch vary (the last batch of a width, out-of-memory halving); compile
            # them as a dynamic dimension instead of once per row count. A shared bias has one
            # row whatever the batch.
            torch._dynamo.mark_dynamic(hidden, 0)
            if key_padding is not None:
                torch._dynamo.mark_dynamic(key_padding, 0)
            if bias.shape[0] > 1:
                torch._dynamo.mark_dynamic(bias, 0)
            if self.dynamic_width:
                torch._dynamo.mark_dynamic(hidden, 1)
                torch._dynamo.mark_dynamic(bias, 2)
                torch._dynamo.mark_dynamic(bias, 3)
                if key_padding is not None:
                    torch._dynamo.mark_dynamic(key_padding, 1)
        # The kernel is chosen when a graph is traced, so the preference holds compiled too.
        with _preferred_attention():
            for layer in self.layers:
                hidden = self._layer(
                    hidden,
                    bias,
                    key_padding,
                    *layer.weights(),
                    n_heads=self.n_heads,
                    eps=self.eps,
                    activation=self.activation,
                    gated=self.gated,
                )
        return F.rms_norm(hidden, (hidden.shape[-1],), self.final_norm, self.eps)

    def key_padding(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The score each key of a batch adds (see :func:`encoder_layer`).

        Returns
        -------
        Tensor of shape (batch, length, 1)
            In the compute dtype: 0 for a real token, :data:`_PADDED_KEY_SCORE` for padding.
        """
        keep = attention_mask.bool()[:, :, None]
        return torch.where(keep, 0.0, _PADDED_KEY_SCORE).to(self.dtype)


def _preferred_attention():
    try:
        return sdpa_kernel(_ATTENTION_BACKENDS, set_priority=True)
    except TypeError:  # torch < 2.6 has no priorities: the same kernels, in torch's order
        return sdpa_kernel(_ATTENTION_BACKENDS)


def _compiled_layer() -> Callable[..., torch.Tensor]:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), _RECOMPILE_LIMIT))
    # Static shapes but for the dimensions marked dynamic: the padded width stays a constant
    # of each compiled graph, which is what lets inductor pick the best kernels for it.
    return torch.compile(encoder_layer, dynamic=False, fullgraph=True)


def _frozen(tensor: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(tensor.detach(), requires_grad=False)


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    # A Linear module (not a bare tensor) so that tools counting parameters by layer type, as
    # benchmarks/throughput.py does for FLOPs, see the projections.
    out_features, in_features = weight.shape
    linear = torch.nn.Linear(in_features, out_features, bias=False, device="meta")
    linear.weight = _frozen(weight)
    return linear
