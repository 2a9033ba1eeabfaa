"""A slow, independent INSTRUCTOR reference written straight from the published rules.

It shares no code with sk_instructor: transformers loads the encoder from the folder by itself,
each text is embedded alone, and every mask is built explicitly, step by step, as
../shared/reference/instructor-numerics.md states the rules of InstructorEmbedding 1.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, T5EncoderModel


class ReferenceInstructor:
    def __init__(self, folder: Path, max_len: int | None = None) -> None:
        folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.encoder = T5EncoderModel.from_pretrained(str(folder)).eval()
        self.max_len = (
            max_len
            or json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        )
        dense_config = json.loads((folder / "2_Dense" / "config.json").read_text())
        assert dense_config["bias"] is False
        dense_file = folder / "2_Dense" / "pytorch_model.bin"
        if dense_file.exists():
            state = torch.load(dense_file, weights_only=True)
        else:
            from safetensors.torch import load_file

            state = load_file(str(folder / "2_Dense" / "model.safetensors"))
        self.dense_weight = state["linear.weight"].double()

    @torch.no_grad()
    def embed(self, instruction: str, text: str) -> np.ndarray:
        # Text stripped, joined with no separator, the whole stripped again.
        model_input = (instruction + text.strip()).strip()
        # Truncation to max_seq_length.
        encoded = self.tokenizer(
            model_input, truncation=True, max_length=self.max_len, return_tensors="pt"
        )
        # The instruction, stripped, tokenized alone, minus its trailing special token.
        n = (
            len(
                self.tokenizer(instruction.strip(), truncation=True, max_length=self.max_len)[
                    "input_ids"
                ]
            )
            - 1
        )
        # n <= 1 masks nothing.
        if n <= 1:
            n = 0
        # The encoder sees the full attention mask.
        hidden = self.encoder(**encoded).last_hidden_state[0].double()
        pooling_mask = torch.ones(hidden.shape[0], dtype=torch.float64)
        pooling_mask[:n] = 0.0
        # Masked mean with the count clamped at 1e-9.
        pooled = (hidden * pooling_mask[:, None]).sum(0) / pooling_mask.sum().clamp(min=1e-9)
        # Dense (no bias, Identity), then L2 normalisation.
        projected = self.dense_weight @ pooled
        norm = projected.norm()
        return (projected / norm if norm > 0 else projected).numpy()
