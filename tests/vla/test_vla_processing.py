"""Image processor, prompt, tiny tokenizer, training ids vs upstream's text route, batch transform + collate."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stamo_vla.keys import (
    ACTION,
    ACTIONS,
    ATTENTION_MASK,
    FUTURE_STATE,
    HAS_ACTION,
    IGNORE_INDEX,
    IMAGE,
    INPUT_IDS,
    INSTRUCTION,
    LABELS,
    PIXEL_VALUES,
)
from stamo_vla.vla import ActionTokenizer, OpenVLABatchTransform, OpenVLAProcessor, build_prompt
from stamo_vla.vla.processing_openvla import OpenVLAImageProcessor
from stamo_vla.vla.tiny import build_processor, tiny_config
from stamo_vla.vla.tokenization import EMPTY_TOKEN_ID, build_tiny_tokenizer


@pytest.fixture(scope="module")
def processor():
    return build_processor(tiny_config())


def _image(seed=0, size=224):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_prompt_format():
    assert (
        build_prompt("Pick Up The Bowl") == "In: What action should the robot take to pick up the bowl?\nOut:"
    )
    for bad in ("", "   ", None):
        with pytest.raises(ValueError, match="instruction"):
            build_prompt(bad)


def test_image_processor_matches_manual_pipeline():
    proc = OpenVLAImageProcessor()
    img = _image(1, size=256)
    pixels = proc(img)["pixel_values"]
    assert pixels.shape == (1, 6, 224, 224) and pixels.dtype == torch.float32
    resized = (
        np.asarray(Image.fromarray(img).resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    )
    x = torch.from_numpy(resized).permute(2, 0, 1)
    dino_mean = torch.tensor([0.484375, 0.455078125, 0.40625]).view(3, 1, 1)
    dino_std = torch.tensor([0.228515625, 0.2236328125, 0.224609375]).view(3, 1, 1)
    torch.testing.assert_close(pixels[0, :3], (x - dino_mean) / dino_std)
    torch.testing.assert_close(pixels[0, 3:], (x - 0.5) / 0.5)


def test_preprocessor_config_round_trip_and_upstream_fields(tmp_path):
    proc = OpenVLAImageProcessor()
    proc.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert data["means"] == [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]]
    assert data["tvf_normalize_params"][0]["mean"] == [0.484375, 0.455078125, 0.40625]
    back = OpenVLAImageProcessor.from_pretrained(tmp_path)
    img = _image(2)
    assert torch.equal(back(img)["pixel_values"], proc(img)["pixel_values"])
    # upstream file without tvf_normalize_params: means/stds are bf16-rounded
    slim = {
        k: data[k]
        for k in ("use_fused_vision_backbone", "image_resize_strategy", "input_sizes", "means", "stds")
    }
    assert OpenVLAImageProcessor.from_dict(slim).normalize_params == proc.normalize_params


def test_letterbox_pads_with_mean_colour():
    proc = OpenVLAImageProcessor(image_resize_strategy="letterbox", use_fused_vision_backbone=False)
    wide = np.zeros((112, 224, 3), dtype=np.uint8)
    pixels = proc(wide)["pixel_values"][0]
    fill = (int(0.5 * 255) / 255 - 0.5) / 0.5
    assert torch.allclose(pixels[:, 0, 112], torch.full((3,), fill), atol=1e-6)
    assert torch.allclose(pixels[:, 112, 112], torch.full((3,), -1.0), atol=1e-6)


def test_image_processor_rejects_bad_arrays():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        OpenVLAImageProcessor()(np.zeros((224, 224, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        OpenVLAImageProcessor()(np.zeros((224, 224, 3), dtype=np.float32))


def test_tiny_tokenizer_layout(tmp_path):
    tok = build_tiny_tokenizer()
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.vocab_size) == (1, 2, 512, 512)
    assert tok.convert_ids_to_tokens(EMPTY_TOKEN_ID) == "▁"
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(tmp_path)
    text = build_prompt("put the cream cheese in the bowl")
    assert back(text).input_ids == tok(text).input_ids and back.pad_token_id == 512


def test_training_ids_equal_upstream_text_route(processor):
    tok = processor.tokenizer
    action_tok = ActionTokenizer(tok)
    transform = OpenVLABatchTransform(processor, action_tok)
    rng = np.random.default_rng(0)
    for instruction in (
        "pick up the black bowl",
        "Open The Drawer",
        "turn on the stove and put the moka pot on it",
    ):
        action = rng.uniform(-1.2, 1.2, 7)
        direct = transform.token_ids(instruction, action)
        # upstream: "In: ...?\nOut: " + decoded action characters + "</s>", tokenized with BOS
        text = (
            f"In: What action should the robot take to {instruction.lower()}?\nOut: "
            + action_tok(action)
            + "</s>"
        )
        assert direct == tok(text).input_ids
        assert direct[-9] == EMPTY_TOKEN_ID and direct[-1] == tok.eos_token_id


def test_batch_transform_and_collate(processor):
    transform = OpenVLABatchTransform(processor, ActionTokenizer(processor.tokenizer))
    actions = np.array([[0.1, -0.2, 0.3, 0.0, 0.5, -1.0, 1.0]], dtype=np.float32)
    samples = [
        {
            IMAGE: _image(0),
            INSTRUCTION: "pick it",
            ACTION: actions,
            FUTURE_STATE: np.ones((2, 4), np.float32),
        },
        {
            IMAGE: _image(1),
            INSTRUCTION: "a much longer instruction here",
            ACTION: actions,
            FUTURE_STATE: np.zeros((2, 4), np.float32),
        },
        {
            IMAGE: _image(2),
            INSTRUCTION: "no action",
            ACTION: np.full((1, 7), np.nan, np.float32),
            HAS_ACTION: False,
            FUTURE_STATE: np.zeros((2, 4), np.float32),
        },
    ]
    items = [transform(s) for s in samples]
    assert items[0][PIXEL_VALUES].shape == (6, 224, 224)
    supervised = items[0][LABELS] != IGNORE_INDEX
    assert supervised.sum() == 8 and supervised[-8:].all()
    assert items[0][LABELS][-8:-1].tolist() == ActionTokenizer(512).encode_to_ids(actions[0]).tolist()
    assert (items[2][LABELS] == IGNORE_INDEX).all()
    batch = transform.collate(items)
    lengths = [len(it[INPUT_IDS]) for it in items]
    assert batch[INPUT_IDS].shape == (3, max(lengths))
    assert batch[ATTENTION_MASK].sum(1).tolist() == lengths
    short = lengths.index(min(lengths))
    assert (batch[INPUT_IDS][short, min(lengths) :] == 512).all()
    assert (batch[LABELS][short, min(lengths) :] == IGNORE_INDEX).all()
    assert batch[FUTURE_STATE].shape == (3, 2, 4) and batch[ACTIONS].shape == (3, 1, 7)
    assert batch[HAS_ACTION].tolist() == [True, True, False]
    assert batch[PIXEL_VALUES].shape == (3, 6, 224, 224)


def test_processor_save_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    back = OpenVLAProcessor.from_pretrained(tmp_path)
    assert back.empty_token_id == EMPTY_TOKEN_ID
    texts = [build_prompt("a"), build_prompt("a longer one")]
    images = [_image(0), _image(1)]
    out, ref = back(texts, images), processor(texts, images)
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(out[key], ref[key])
    assert out["attention_mask"][0].sum() < out["attention_mask"][1].sum()  # right padding
    with pytest.raises(ValueError, match="2 texts and 1 images"):
        processor(texts, images[:1])
