"""What a VideoLLaMA2 checkpoint is fed: slow-sentencepiece ids, the v1.x prompt, crop or pad frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facetrack.model import prompt
from facetrack.model.vision import CLIP_MEAN, CLIP_STD, ImagePreprocessor

SYSTEM_OPENING = "[INST] <<SYS>>\n"


@pytest.fixture(scope="module")
def sp():
    """sentencepiece itself on the tokenizer.model.v1 that ships in mistral-common: the reference."""
    sentencepiece = pytest.importorskip("sentencepiece")
    from facetrack.model.tiny import mistral_tokenizer_file

    return sentencepiece.SentencePieceProcessor(model_file=str(mistral_tokenizer_file()))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory):
    """Mistral's tokenizer as transformers loads it: tokenizer.model alone, and with a tokenizer.json."""
    from transformers import AutoTokenizer

    from facetrack.model.tiny import write_mistral_tokenizer

    only_model = write_mistral_tokenizer(tmp_path_factory.mktemp("sp-only"))
    with_json = write_mistral_tokenizer(tmp_path_factory.mktemp("sp-and-json"))
    AutoTokenizer.from_pretrained(str(with_json)).save_pretrained(str(with_json))
    assert (with_json / "tokenizer.json").is_file() and (with_json / "tokenizer.model").is_file()
    return {
        "tokenizer.model": AutoTokenizer.from_pretrained(str(only_model)),
        "tokenizer.model + tokenizer.json": AutoTokenizer.from_pretrained(str(with_json)),
    }


def reference_v1_ids(sp, instruction: str) -> list[int]:
    """VideoLLaMA2 v1.x: the llama2 template's text, split at <video>, each chunk encoded by the slow
    tokenizer (sentencepiece with its BOS), the first BOS kept, -201 between the chunks."""
    system = prompt.llama2_system_prompt()
    before = f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n"
    after = f"\n{instruction} [/INST]"
    return [1, *sp.encode(before), -201, *sp.encode(after)]


INSTRUCTIONS = [prompt.benchmark_instruction(), *prompt.paraphrases()[:6], "Describe  it.  Twice  spaced."]


@pytest.mark.parametrize("which", ["tokenizer.model", "tokenizer.model + tokenizer.json"])
@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_v1_prompt_ids_are_the_slow_tokenizers(sp, tokenizers, which: str, instruction: str) -> None:
    tok = tokenizers[which]
    text = prompt.caption_prompt(tok, instruction, system=prompt.llama2_system_prompt(), style="llama2")
    assert text.startswith(SYSTEM_OPENING) and text.endswith(f"<video>\n{instruction} [/INST]")
    assert prompt.encoding_backend(tok) == "sentencepiece"
    assert prompt.prompt_ids(text, tok, style="llama2") == reference_v1_ids(sp, instruction)


def test_the_system_text_has_a_blank_line_between_its_paragraphs(sp, tokenizers) -> None:
    system = prompt.llama2_system_prompt()
    first, second = system.split("\n\n")
    assert first.endswith("positive in nature.") and second.startswith("If a question")
    assert "safe.  Your" in first  # the double space is VideoLLaMA2's
    ids = prompt.encode(system, tokenizers["tokenizer.model"])
    assert ids == sp.encode(system)
    assert [28705, 3604] == sp.encode("safe.  Your")[2:]  # '▁' + 'Your', as sentencepiece splits it


def test_transformers_5_alone_differs_where_sentencepiece_does_not(sp, tokenizers) -> None:
    # The two differences this module exists for: a space after <s>, and a double space.
    tok = tokenizers["tokenizer.model"]
    assert prompt.encode("<s> [INST]", tok) == [1, 28705, 733, 16289, 28793]
    assert tok("<s> [INST]", add_special_tokens=False).input_ids == [1, 733, 16289, 28793]
    assert prompt.encode("safe.  Your", tok) == sp.encode("safe.  Your") == [5023, 28723, 28705, 3604]
    assert tok("safe.  Your", add_special_tokens=False).input_ids == [5023, 28723, 259, 11159]


def test_special_tokens_in_the_text_are_their_ids(tokenizers) -> None:
    tok = tokenizers["tokenizer.model"]
    assert prompt.encode("<s>[INST] Q [/INST]A</s>", tok)[:2] == [1, 733]
    assert prompt.encode("<s>[INST] Q [/INST]A</s>", tok)[-1] == 2


def test_without_tokenizer_model_the_tokenizer_encodes(tmp_path: Path, tokenizers) -> None:
    from transformers import AutoTokenizer

    folder = tmp_path / "json-only"
    tokenizers["tokenizer.model + tokenizer.json"].save_pretrained(str(folder))
    (folder / "tokenizer.model").unlink(missing_ok=True)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert prompt.encoding_backend(tok) == "tokenizer"
    text = "Describe the face."
    assert prompt.encode(text, tok) == tok(text, add_special_tokens=False).input_ids


def test_llama2_prompt_without_system() -> None:
    assert prompt.llama2_prompt("Q", system=None) == "[INST] <video>\nQ [/INST]"
    with pytest.raises(ValueError, match="prompt style"):
        prompt.caption_prompt(None, "Q", style="vicuna")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- preprocessing


def reference_pixels(frame: np.ndarray, size: int, pad: bool) -> torch.Tensor:
    """CLIP's image processor (Pillow backend) on the frame, padded first as VideoLLaMA2's expand2square."""
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = Image.fromarray(frame)
    if pad and image.width != image.height:
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in CLIP_MEAN))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    hf = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return hf(images=[image], return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("shape", [(120, 200), (128, 96), (112, 112), (481, 853), (33, 35)])
@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_preprocessing_is_clips_image_processor(shape: tuple[int, int], mode: str) -> None:
    frame = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = ImagePreprocessor(size=56, mode=mode)(frame[None])
    torch.testing.assert_close(ours, reference_pixels(frame, 56, pad=mode == "pad"), atol=0, rtol=0)


def test_crop_and_pad_differ_on_a_5_to_3_frame() -> None:
    # Three vertical bands: red | green | blue, 200 x 120.
    frame = np.zeros((120, 200, 3), np.uint8)
    frame[:, :67, 0], frame[:, 67:133, 1], frame[:, 133:, 2] = 255, 255, 255
    crop = ImagePreprocessor(size=60, mode="crop").resize(frame[None])[0]
    pad = ImagePreprocessor(size=60, mode="pad").resize(frame[None])[0]
    fill = torch.tensor([int(m * 255) for m in CLIP_MEAN], dtype=torch.uint8)
    # Crop: the middle 120 x 120 (a fifth of each side band), no padding colour anywhere.
    assert crop.shape == pad.shape == (3, 60, 60)
    assert crop[:, 0, 0].tolist() == [255, 0, 0] and crop[:, 30, 30].tolist() == [0, 255, 0]
    assert not (crop == fill.view(3, 1, 1)).all(0).any()
    # Pad: the whole frame in the middle, mean-colour bands above and below.
    assert torch.equal(pad[:, 0, 30], fill) and torch.equal(pad[:, 59, 30], fill)
    assert pad[:, 30, 2].tolist()[0] > 200 and pad[:, 30, 57].tolist()[2] > 200
    assert (crop.float() - pad.float()).abs().mean() > 40


def test_preprocessor_modes() -> None:
    assert ImagePreprocessor().mode == "pad"
    assert ImagePreprocessor(pad_to_square=False).mode == "crop"
    assert ImagePreprocessor(pad_to_square=True, mode="crop").mode == "crop"
    with pytest.raises(ValueError, match="preprocess mode"):
        ImagePreprocessor(mode="stretch")  # type: ignore[arg-type]
    x = ImagePreprocessor(size=8, mode="squash")(np.full((1, 4, 16, 3), 255, np.uint8))
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[0, :, 0, 0], white, atol=1e-3, rtol=0)


# --------------------------------------------------------------------- what checkpoints record and get


def test_spec_records_preprocess_and_reads_the_old_key() -> None:
    from facetrack.model.tiny import tiny_spec

    spec = tiny_spec()
    assert spec.preprocess == "crop"
    data = spec.to_dict()
    assert data["preprocess"] == "crop" and "pad_to_square" not in data
    old = {k: v for k, v in data.items() if k != "preprocess"}
    assert type(spec).from_dict({**old, "pad_to_square": True}).preprocess == "pad"
    assert type(spec).from_dict({**old, "pad_to_square": False}).preprocess == "crop"
    with pytest.raises(ValueError, match="preprocess"):
        type(spec).from_dict({**data, "preprocess": "squash"})


def test_checkpoints_caption_with_the_preprocessing_they_record(tmp_path: Path, tiny_dir: Path) -> None:
    from facetrack.model.checkpoint_files import OUR_CONFIG
    from facetrack.model.language_model import load_tokenizer
    from facetrack.model.loading import load_model
    from facetrack.model.saving import save_checkpoint
    from facetrack.model.tiny import build_tiny, tiny_spec

    # Ours: a model trained with pad writes it into facetrack.json and loads back padding.
    spec = tiny_spec()
    spec.preprocess = "pad"
    model = build_tiny(spec, seed=1)
    ours = save_checkpoint(model, load_tokenizer(tiny_dir), tmp_path / "ours")
    assert json.loads((ours / OUR_CONFIG).read_text())["spec"]["preprocess"] == "pad"
    loaded = load_model(str(ours))
    assert loaded.model.image_processor.mode == "pad" and loaded.family == "facetrack"
    assert loaded.prompt_style == "chat"

    # VideoLLaMA2 folders crop whatever image_aspect_ratio says, unless ours recorded otherwise.
    config = json.loads((tiny_dir / "config.json").read_text())
    for aspect, recorded, expected in (("pad", None, "crop"), ("pad", "pad", "pad")):
        folder = tmp_path / f"v2-{aspect}-{recorded}"
        _copy_folder(tiny_dir, folder)
        cfg = dict(config, image_aspect_ratio=aspect)
        cfg.pop("facetrack_preprocess", None)
        if recorded:
            cfg["facetrack_preprocess"] = recorded
        (folder / "config.json").write_text(json.dumps(cfg))
        got = load_model(str(folder))
        assert got.model.image_processor.mode == expected
        assert got.family == "videollama2-v1" and got.prompt_style == "llama2"


def _copy_folder(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)


def test_captioner_preprocess_override(loaded) -> None:
    from facetrack.caption import Captioner, CaptionerConfig
    from facetrack.model.loading import LoadedModel
    from facetrack.model.tiny import build_tiny, tiny_spec

    own = LoadedModel(
        model=build_tiny(tiny_spec(), seed=0), tokenizer=loaded.tokenizer, name="t", source="t",
        kind="videollama2", family="videollama2-v1",
    )  # fmt: skip
    assert own.model.image_processor.mode == "crop"
    Captioner.from_model(CaptionerConfig(model="t", preprocess="pad"), own)
    assert own.model.image_processor.mode == "pad"
    chat = Captioner.from_model(CaptionerConfig(model="t", prompt_style="chat"), own)
    assert chat.prompt_style == "chat" and chat.prompt_text.startswith("<s>[INST] <<SYS>>\n")
