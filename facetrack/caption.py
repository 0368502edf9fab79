"""The captioner: load FaceTrack-MM once, then caption batches of prepared clips with batched generation.

Shape of a pipeline stage: ``Captioner(config)`` is cheap, :meth:`Captioner.setup` loads the model (once),
:meth:`Captioner.caption` takes :class:`facetrack.types.Clip` records and returns one
:class:`CaptionResult` per clip, in order. A clip that cannot be processed gets ``error`` set and no
caption; the others in its batch are still captioned.

Batching is real: the frames of every clip in a batch go through the vision tower together (on CPU in
passes of 16 images, which stay in cache), the crops through the face encoder together, and the prompts
through one ``generate`` call (left padding, attention masks, greedy by default, stop at EOS). The
prompt text before the ``<video>`` placeholder (chat opening and system prompt) is the same for every
clip; it runs through the language model once per batch. bf16 on GPU, fp32 on CPU by default (``dtype:
float16`` for fp16). VideoLLaMA2 checkpoints are asked as VideoLLaMA2 asks them: the v1.x ``llama2``
prompt for v1.x checkpoints, slow-sentencepiece ids, up to 2048 new tokens.

This module's top-level imports are light (no torch), so that job code can read the config without
loading the model stack.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from facetrack.types import Clip

log = logging.getLogger(__name__)


@dataclass
class CaptionerConfig:
    """Settings of the captioner (YAML section ``model:`` of the caption job)."""

    model: str = ""
    """Checkpoint: a folder, a hub id or an ``s3://`` prefix (VideoLLaMA2 or FaceTrack-MM format)."""
    model_base: str | None = None
    """Base model of a LoRA checkpoint (default: its config's ``_name_or_path``)."""
    model_name: str | None = None
    """Name written into output rows (default: from the checkpoint)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: the GPU when there is one, else the CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: bfloat16 on GPU, float32 on CPU."""
    batch_size: int = 8
    max_new_tokens: int = 2048
    """At most this many new tokens (VideoLLaMA2's default), fewer where the model's context ends first;
    generation stops at the end-of-sequence token."""
    do_sample: bool = False
    """Greedy decoding unless true."""
    temperature: float = 0.2
    top_p: float = 0.9
    seed: int = 0
    """Seeds sampling (set once in :meth:`Captioner.setup`)."""
    num_frames: int | None = None
    """Frames per clip given to the model (default: the checkpoint's ``num_frames``); clips are
    resampled uniformly to this count."""
    face_tokens_per_frame: int | None = None
    """Face tokens per frame (default: the checkpoint's)."""
    encoder_chunk: int | None = None
    """Images per vision-tower pass (``0``: a whole batch in one pass; default: 16 on CPU, where smaller
    passes stay in cache and run faster, and 0 on GPU)."""
    face_encoder_path: str | None = None
    """FaceXFormer checkpoint, when the model uses it and does not carry its weights."""
    prompt: str | None = None
    """The instruction (default: the benchmark's, :func:`facetrack.model.prompt.benchmark_instruction`)."""
    use_system_prompt: bool = True
    """Open the conversation with VideoLLaMA2's system prompt."""
    prompt_style: Literal["auto", "llama2", "chat"] = "auto"
    """``auto``: ``llama2`` (VideoLLaMA2's v1.x template) for VideoLLaMA2 v1.x checkpoints, ``chat`` (the
    tokenizer's chat template) for later ones and for ours (see :mod:`facetrack.model.prompt`)."""
    preprocess: Literal["auto", "crop", "pad"] = "auto"
    """How frames become squares: ``auto`` is the checkpoint's (``crop`` for VideoLLaMA2 folders, as its
    inference does; what a fine-tuned checkpoint recorded); ``crop`` or ``pad`` override it."""
    cache_dir: str | None = None
    """Where ``s3://`` and hub checkpoints are cached."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.encoder_chunk is not None and self.encoder_chunk < 0:
            raise ValueError(f"encoder_chunk must be >= 0, got {self.encoder_chunk}")
        if self.face_tokens_per_frame is not None and self.face_tokens_per_frame < 1:
            raise ValueError(f"face_tokens_per_frame must be >= 1, got {self.face_tokens_per_frame}")


@dataclass(slots=True)
class CaptionResult:
    """The captioner's answer for one clip: ``caption`` or ``error`` (exactly one is set)."""

    id: str
    caption: str | None = None
    error: str | None = None
    num_tokens: int = 0
    """Generated tokens (EOS excluded)."""
    used_faces: bool = False
    """Whether face tokens were part of the input (a main character was found)."""
    seconds: float = 0.0
    """This clip's share of its batch's wall time (preprocessing + encoding + generation)."""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def resample_indices(count: int, target: int) -> np.ndarray:
    """``target`` indices spread uniformly over ``count`` items (repeating items when ``count < target``)."""
    if count < 1:
        raise ValueError("no frames")
    return np.round(np.linspace(0, count - 1, target)).astype(int)


def _check_images(images: Any, what: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ValueError(f"{what} must be a (T, H, W, 3) array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 RGB, got dtype {arr.dtype}")
    return arr


class Captioner:
    """FaceTrack-MM captioning of prepared clips; see the module docstring.

    Example::

        captioner = Captioner(CaptionerConfig(model="path/to/checkpoint"))
        captioner.setup()
        for result in captioner.caption(clips):
            print(result.id, result.caption or result.error)
    """

    def __init__(self, config: CaptionerConfig) -> None:
        if not config.model:
            raise ValueError(
                "CaptionerConfig.model is empty: give a checkpoint folder, hub id or s3:// prefix"
            )
        self.config = config
        self._loaded: Any = None
        self._ids: list[int] = []
        self._prompt_text = ""
        self._style = ""
        self._generation: Any = None
        self.num_frames = 0

    @classmethod
    def from_model(cls, config: CaptionerConfig, loaded: Any) -> Captioner:
        """A captioner around an already loaded model (a :class:`facetrack.model.loading.LoadedModel`),
        for example one being fine-tuned or built in memory; ``config.model`` only names it."""
        captioner = cls(config)
        captioner._setup_from(loaded)
        return captioner

    # -- setup --------------------------------------------------------------------------------------

    def _device_dtype(self):
        import torch

        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU")
        names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.config.dtype == "auto":
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
        else:
            dtype = names[self.config.dtype]
        return torch.device(device), dtype

    def setup(self) -> None:
        """Load the model and tokenizer and prepare the prompt (idempotent).

        Raises:
            facetrack.model.loading.CheckpointError: the checkpoint is missing or broken.
            ImportError: the model dependencies are missing (``pip install 'facetrack[model]'``).
        """
        if self._loaded is not None:
            return
        try:
            import transformers  # noqa: F401

            from facetrack.model.loading import load_model
        except ImportError as exc:
            raise ImportError(
                f"captioning needs the model stack ({exc}): pip install 'facetrack[model]'"
            ) from exc
        cfg = self.config
        device, dtype = self._device_dtype()
        start = time.perf_counter()
        loaded = load_model(
            cfg.model,
            base=cfg.model_base,
            device=device,
            dtype=dtype,
            cache_dir=cfg.cache_dir,
            face_encoder_path=cfg.face_encoder_path,
        )
        self._setup_from(loaded)
        log.info(
            "captioner ready: %s (%s) on %s/%s, %d frames, %d video tokens, face branch %s, in %.1f s",
            loaded.name, loaded.kind, device, str(dtype).removeprefix("torch."), self.num_frames,
            loaded.model.num_video_tokens(self.num_frames), loaded.model.spec.face_encoder,
            time.perf_counter() - start,
        )  # fmt: skip

    def _setup_from(self, loaded: Any) -> None:
        import torch
        from transformers import GenerationConfig

        from facetrack.model import prompt as prompts

        cfg = self.config
        model, tokenizer = loaded.model, loaded.tokenizer
        if cfg.face_tokens_per_frame is not None:
            model.face_tokens_per_frame = cfg.face_tokens_per_frame
        if cfg.encoder_chunk is not None:
            model.encoder_chunk = cfg.encoder_chunk
        else:
            model.encoder_chunk = 16 if model.device.type == "cpu" else 0
        if cfg.preprocess != "auto":
            model.image_processor.mode = cfg.preprocess
        self.num_frames = cfg.num_frames or model.spec.num_frames
        style = cfg.prompt_style
        if style == "auto":
            style = getattr(loaded, "prompt_style", "chat")
        if style == "llama2":
            system = prompts.llama2_system_prompt() if cfg.use_system_prompt else None
        else:
            system = prompts.system_prompt() if cfg.use_system_prompt else None
        self._style = style
        self._prompt_text = prompts.caption_prompt(tokenizer, self.prompt, system=system, style=style)
        self._ids = prompts.prompt_ids(self._prompt_text, tokenizer, style=style)
        eos = tokenizer.eos_token_id
        sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else {}
        self._generation = GenerationConfig(
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.do_sample,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
            bos_token_id=tokenizer.bos_token_id,
            **sampling,
        )
        torch.manual_seed(cfg.seed)
        self._loaded = loaded

    # -- facts for output rows -------------------------------------------------------------------------

    @property
    def prompt(self) -> str:
        """The instruction asked for every clip (what output rows record as ``prompt``)."""
        if self.config.prompt:
            return self.config.prompt
        from facetrack.model.prompt import benchmark_instruction

        return benchmark_instruction()

    @property
    def prompt_text(self) -> str:
        """The full prompt given to the model (chat format, system prompt, ``<video>`` placeholder)."""
        self.setup()
        return self._prompt_text

    @property
    def prompt_style(self) -> str:
        """``llama2`` or ``chat``: how the prompt text was built."""
        self.setup()
        return self._style

    @property
    def input_ids(self) -> list[int]:
        """The prompt's ids, with :data:`facetrack.model.prompt.VIDEO_TOKEN_INDEX` (-201) where the visual
        tokens go."""
        self.setup()
        return list(self._ids)

    def context_limit(self) -> int | None:
        """The language model's context length (``max_position_embeddings``), if it has one."""
        return getattr(self.model.llm.config, "max_position_embeddings", None)

    @property
    def model_name(self) -> str:
        """The model's name for output rows."""
        if self.config.model_name:
            return self.config.model_name
        self.setup()
        return self._loaded.name

    @property
    def model(self):
        """The loaded :class:`facetrack.model.modeling.FaceTrackMM`."""
        self.setup()
        return self._loaded.model

    @property
    def loaded(self):
        """The :class:`facetrack.model.loading.LoadedModel` (model, tokenizer, format and family)."""
        self.setup()
        return self._loaded

    @property
    def tokenizer(self):
        self.setup()
        return self._loaded.tokenizer

    # -- captioning ---------------------------------------------------------------------------------

    def caption(self, clips: Sequence[Clip]) -> list[CaptionResult]:
        """Caption ``clips`` in batches of ``batch_size``; one result per clip, in order."""
        self.setup()
        results: list[CaptionResult] = []
        size = self.config.batch_size
        for start in range(0, len(clips), size):
            results.extend(self._caption_batch(list(clips[start : start + size])))
        return results

    def _prepare(self, clip: Clip):
        """``(frames tensor, crops tensor or None, input length)`` for one clip; raises ValueError on bad
        input or when the prompt and visual tokens leave no room in the model's context."""
        model = self._loaded.model
        frames = _check_images(clip.frames, "frames")
        frames = frames[resample_indices(len(frames), self.num_frames)]
        pixels = model.preprocess_frames(frames)
        faces = None
        if model.has_face_branch and clip.crops is not None and len(clip.crops) > 0:
            crops = _check_images(clip.crops, "crops")
            crops = crops[resample_indices(len(crops), self.num_frames)]
            faces = model.preprocess_faces(crops)
        length = (
            len(self._ids) - 1
            + model.num_video_tokens(self.num_frames)
            + (model.num_face_tokens(self.num_frames) if faces is not None else 0)
        )  # fmt: skip
        limit = self.context_limit()
        if limit is not None and length >= limit:
            raise ValueError(f"prompt + visual tokens = {length} leave no room in the model's {limit}")
        return pixels, faces, length

    def _caption_batch(self, clips: list[Clip]) -> list[CaptionResult]:
        start = time.perf_counter()
        results: list[CaptionResult | None] = [None] * len(clips)
        prepared: list[tuple[int, Any, Any]] = []
        longest = 0
        for i, clip in enumerate(clips):
            try:
                pixels, faces, length = self._prepare(clip)
                prepared.append((i, pixels, faces))
                longest = max(longest, length)
            except Exception as exc:  # noqa: BLE001 - any bad clip becomes an error record
                results[i] = CaptionResult(id=clip.id, error=f"bad input: {exc}")
        prep_s = time.perf_counter() - start
        if prepared:
            try:
                texts = self._generate(prepared, longest)
            except Exception as exc:  # noqa: BLE001 - isolate the clip that fails
                if len(prepared) == 1:
                    i = prepared[0][0]
                    log.warning("captioning %s failed: %s", clips[i].id, exc)
                    results[i] = CaptionResult(id=clips[i].id, error=f"{type(exc).__name__}: {exc}")
                    texts = []
                else:
                    log.warning("batch of %d failed (%s); retrying its clips one by one", len(prepared), exc)
                    self._free_memory()
                    for i, _, _ in prepared:
                        results[i] = self._caption_batch([clips[i]])[0]
                    texts = None
            if texts:
                for (i, _, faces), (caption, n_tokens) in zip(prepared, texts):
                    results[i] = CaptionResult(
                        id=clips[i].id, caption=caption, num_tokens=n_tokens, used_faces=faces is not None
                    )
        wall = time.perf_counter() - start
        out = [r for r in results if r is not None]
        for r in out:
            if not r.seconds:
                r.seconds = wall / len(clips)
                r.timings = {"batch_size": float(len(clips)), "batch_s": wall, "prepare_s": prep_s}
        return out

    def max_new_tokens_for(self, input_length: int) -> int:
        """New tokens allowed after an input of ``input_length`` tokens: ``max_new_tokens``, or fewer where
        the model's context ends first (VideoLLaMA2 generates up to 2048 where the context allows)."""
        limit = self.context_limit()
        room = self.config.max_new_tokens if limit is None else limit - input_length
        return max(1, min(self.config.max_new_tokens, room))

    def _generate(self, prepared: list[tuple[int, Any, Any]], longest: int) -> list[tuple[str, int]]:
        import torch

        model = self._loaded.model
        tokenizer = self._loaded.tokenizer
        pixels = torch.stack([p for _, p, _ in prepared])
        faces = [f for _, _, f in prepared]
        generation = self._generation
        new_tokens = self.max_new_tokens_for(longest)
        if new_tokens != generation.max_new_tokens:
            generation = copy.deepcopy(generation)
            generation.max_new_tokens = new_tokens
        out = model.generate([self._ids] * len(prepared), pixels, faces, generation_config=generation)
        eos = tokenizer.eos_token_id
        texts = []
        for row in out.tolist():
            if eos in row:
                row = row[: row.index(eos)]
            texts.append((tokenizer.decode(row, skip_special_tokens=True).strip(), len(row)))
        return texts

    @staticmethod
    def _free_memory() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
