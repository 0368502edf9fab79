"""Chat backend over a local transformers causal LM (greedy decoding), loaded once on first use.

In the benchmark job this backend lives inside GPU actors (one model per actor). Without a chat template
in the tokenizer the messages are laid out as plain ``System:/User:/Assistant:`` turns.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

MODEL_INSTALL = "pip install 'facetrack[model]'"


@dataclass
class TransformersJudgeConfig:
    """Which model to load and how to decode."""

    model: str = ""
    """A local folder or hub id of a causal LM with a tokenizer."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    dtype: str = "auto"
    """``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16``, ``float16``."""
    max_new_tokens: int = 1024
    num_gpus: float = 1.0
    """GPUs each judge actor of the benchmark job asks Ray for."""


class TransformersChat:
    """A :class:`~evaluation.judges.llm.ChatBackend` that generates with a local model."""

    max_concurrency = 1

    def __init__(self, config: TransformersJudgeConfig) -> None:
        if not config.model:
            raise ValueError("transformers judge: set judge.transformers.model (a folder or hub id)")
        self.config = config
        self.name = f"transformers:{config.model}"
        self._model = None
        self._tokenizer = None
        self._device = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"backend": "transformers", "model": self.config.model, "device": str(self._device or "")}

    def setup(self) -> None:
        """Load the tokenizer and model (done on first use when not called)."""
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ImportError(
                f"the transformers judge needs torch and transformers: {MODEL_INSTALL}"
            ) from exc
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype_name = self.config.dtype
        if dtype_name == "auto":
            dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
        dtype = getattr(torch, dtype_name)
        tokenizer = AutoTokenizer.from_pretrained(self.config.model)
        model = AutoModelForCausalLM.from_pretrained(self.config.model, dtype=dtype)
        model.to(device).eval()
        self._tokenizer, self._model, self._device = tokenizer, model, device

    def _prompt_ids(self, messages: list[dict[str, str]]):
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
            if not hasattr(ids, "shape"):  # some versions return a BatchEncoding
                ids = ids["input_ids"]
            return ids
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
        return tok(text, return_tensors="pt").input_ids

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        with self._lock:
            self.setup()
            ids = self._prompt_ids(messages).to(self._device)
            tok = self._tokenizer
            pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            with torch.inference_mode():
                out = self._model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=self.config.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                )
            return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
