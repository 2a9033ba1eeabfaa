"""The OpenVINO backend: the encoder body run by OpenVINO on the CPU (``backend="openvino"``).

Only the transformer body moves: the loaded torch module (transformers' class, float32) is
converted in this process with ``openvino.convert_model``, batch and sequence length dynamic,
and compiled for the CPU in the precision asked for (``INFERENCE_PRECISION_HINT`` ``f32`` for
float32, ``bf16`` for bfloat16). Tokenization, the instruction mask of pooling, Dense and
Normalize stay the engine's own stages in torch, so INSTRUCTOR's rules hold unchanged; the
hidden states come back in float32 whatever the precision inside.

Why OpenVINO: on the CPUs measured (``benchmarks/cpu_runtimes.py``, README "Speed on a CPU")
its bfloat16 is the fastest mode, at a min cosine to float32 of about 0.9999 on real text
(0.99988-0.99996 on MiniLM), its float32 the same vectors as torch's about twice as fast, and it
suffers less than torch's threads when other processes share the cores. It is an optional
extra (``pip install "sk-instructor[openvino]"``); nothing imports it unless the backend is
asked for. (OpenVINO 2025.0 and 2025.2 converted transformers 5's BERT into a model that gives
NaN; 2025.3 is the lowest release found to work, hence the extra's floor. Importing openvino
starts its usage telemetry, which its ``opt_in_out --opt_out`` command turns off.)

Threads follow the engine's layout for the encode running (``cpu_streams.current_layout``:
torch's threads, which ``$SK_INSTRUCTOR_NUM_THREADS`` sets, shared out between streams that run
batches side by side): the model is compiled once per layout met, with one OpenVINO stream per
engine stream, so that the streams' requests run at once on weights compiled once.
"""

from __future__ import annotations

import threading
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .cpu_streams import StreamLayout, current_layout
from .device import OPENVINO_INSTALL_HINT

__all__ = ["OpenVINOEncoder", "import_openvino"]

# OpenVINO's CPU precision hints for the dtypes the backend offers.
_PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}


def import_openvino() -> Any:
    """The ``openvino`` module, or an ImportError that says how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(
            f"backend='openvino' needs OpenVINO: {OPENVINO_INSTALL_HINT} ({exc})"
        ) from exc
    return openvino


class _Body(torch.nn.Module):
    """The encoder as a function of token ids and mask only, returning the hidden states: the
    signature converted (transformers' modules take and return more)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class OpenVINOEncoder:
    """Stands in for transformers' module inside the Transformer stage: token ids and mask in,
    ``last_hidden_state`` (float32, on the CPU) out, computed by OpenVINO.

    Parameters
    ----------
    encoder : torch.nn.Module
        transformers' encoder, float32, in eval mode, on the CPU: the source of the
        conversion (its weights are copied into the converted model and it is let go).
    dtype : {"float32", "bfloat16"}
        The precision OpenVINO computes in.

    Attributes
    ----------
    config : transformers.PretrainedConfig
        The encoder's config (the stage reads its position table's size from it).
    precision : str
        OpenVINO's precision hint in use (``"f32"`` or ``"bf16"``).
    """

    def __init__(self, encoder: torch.nn.Module, *, dtype: str) -> None:
        if dtype not in _PRECISION_HINTS:
            raise ValueError(f"the OpenVINO backend runs float32 or bfloat16, not {dtype!r}.")
        ov = import_openvino()
        self.config = encoder.config
        self.precision = _PRECISION_HINTS[dtype]
        self._core = ov.Core()
        # A padded example: the mask is traced as data, not dropped as all ones, and both axes
        # are declared dynamic, so one converted model serves every batch shape.
        ids = torch.full((2, 8), 1, dtype=torch.long)
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0
        dynamic = ov.PartialShape([-1, -1])
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The converter traces the module: its notes on Python control flow concern
            # shapes it declares dynamic anyway, and mean nothing to the user.
            warnings.simplefilter("ignore")
            self._model = ov.convert_model(
                _Body(encoder).eval(),
                example_input={"input_ids": ids, "attention_mask": mask},
                input=[
                    ("input_ids", dynamic, ov.Type.i64),
                    ("attention_mask", dynamic, ov.Type.i64),
                ],
                # A copy of the weights: shared ones would point into the torch module, which
                # the stage lets go (and compiling again, for another thread count, reads them).
                share_weights=False,
            )
        self._compiled: dict[StreamLayout, Any] = {}
        self._lock = threading.Lock()

    def _compiled_for(self, layout: StreamLayout) -> Any:
        """The model compiled for ``layout`` (compiled on first use)."""
        compiled = self._compiled.get(layout)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(layout)
                if compiled is None:
                    if layout.streams == 1:
                        # One batch at a time: the latency hint gives it every thread.
                        placement = {"PERFORMANCE_HINT": "LATENCY"}
                    else:
                        # The engine's streams call at once: as many OpenVINO streams, so their
                        # requests run side by side instead of queueing for one.
                        placement = {"NUM_STREAMS": layout.streams}
                    compiled = self._core.compile_model(
                        self._model,
                        "CPU",
                        {
                            "INFERENCE_PRECISION_HINT": self.precision,
                            "INFERENCE_NUM_THREADS": layout.streams * layout.threads,
                            **placement,
                        },
                    )
                    self._compiled[layout] = compiled
        return compiled

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> SimpleNamespace:
        ids = input_ids.cpu().numpy()
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.cpu().numpy()
        # One request per call: the streams call at once, a request is not safe to share between
        # threads, and it is cheap next to a forward.
        request = self._compiled_for(current_layout()).create_infer_request()
        request.infer({"input_ids": ids, "attention_mask": mask.astype(np.int64, copy=False)})
        # Copied out: the request owns the output's memory.
        hidden = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))
