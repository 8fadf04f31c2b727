"""Batched predict_action == one-at-a-time, un-normalization, unnorm_key errors, image sensitivity, policy."""

import numpy as np
import pytest
import torch

from stamo_vla.vla import OpenVLAPolicy, build_prompt, build_tiny
from stamo_vla.vla.generation import check_unnorm_key, unnormalize_actions
from stamo_vla.vla.tiny import TINY_DATASET

INSTRUCTIONS = [
    "pick up the black bowl",
    "open the top drawer of the cabinet and put the bowl inside it",
    "x",
    "push the plate to the front of the stove",
]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(n)]


def test_batched_equals_serial_with_different_lengths(tiny):
    model, processor = tiny
    images = _images(4)
    inputs = processor([build_prompt(t) for t in INSTRUCTIONS], images)
    assert len(set(inputs["attention_mask"].sum(1).tolist())) == 4  # four different prompt lengths
    batched = model.predict_action(**inputs, unnorm_key=TINY_DATASET)
    serial = np.concatenate(
        [model.predict_action(**processor([build_prompt(t)], [img])) for t, img in zip(INSTRUCTIONS, images)]
    )
    assert batched.shape == (4, 7)
    np.testing.assert_array_equal(batched, serial)


def test_left_padded_input_and_explicit_empty_token_give_same_result(tiny):
    model, processor = tiny
    images = _images(2, seed=1)
    inputs = processor([build_prompt(t) for t in INSTRUCTIONS[:2]], images)
    ref = model.predict_action(**inputs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    # flip to left padding and append "▁" ourselves: same rows, same actions
    left_ids, left_mask = torch.full_like(ids, 512), torch.zeros_like(mask)
    ids = torch.cat([ids, torch.full_like(ids[:, :1], 512)], 1)
    left_ids, left_mask = (
        torch.cat([left_ids, left_ids[:, :1]], 1),
        torch.cat([left_mask, left_mask[:, :1]], 1),
    )
    for i in range(2):
        row = inputs["input_ids"][i][inputs["attention_mask"][i].bool()].tolist() + [
            model.config.empty_token_id
        ]
        left_ids[i, -len(row) :] = torch.tensor(row)
        left_mask[i, -len(row) :] = 1
    out = model.predict_action(inputs["pixel_values"], left_ids, left_mask)
    np.testing.assert_array_equal(out, ref)


def test_greedy_tokens_match_full_forward_argmax(tiny):
    """The cached loop reproduces step-by-step argmax over the full (uncached) forward pass."""
    model, processor = tiny
    inputs = processor([build_prompt(INSTRUCTIONS[0])], _images(1, seed=2))
    ids = torch.cat([inputs["input_ids"], torch.tensor([[model.config.empty_token_id]])], 1)
    expected = []
    with torch.no_grad():
        for _ in range(7):
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits
            nxt = logits[0, -1].argmax()
            expected.append(int(nxt))
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
    normalized = model.predict_action(**inputs, unnormalize=False)
    from stamo_vla.vla import ActionTokenizer

    np.testing.assert_array_equal(
        normalized[0], ActionTokenizer(512).decode_token_ids_to_actions(np.array(expected))
    )


def test_unnormalization_formula(tiny):
    model, processor = tiny
    inputs = processor([build_prompt(t) for t in INSTRUCTIONS[:2]], _images(2))
    normalized = model.predict_action(**inputs, unnormalize=False)
    actions = model.predict_action(**inputs)
    stats = model.norm_stats[TINY_DATASET]["action"]
    q01, q99 = np.array(stats["q01"]), np.array(stats["q99"])
    expected = 0.5 * (normalized + 1) * (q99 - q01) + q01
    np.testing.assert_allclose(actions[:, :6], expected[:, :6])
    np.testing.assert_array_equal(actions[:, 6], normalized[:, 6])  # gripper (mask False) stays raw
    assert np.allclose(unnormalize_actions(np.zeros(2), {"q01": [0, -2], "q99": [2, 2]}), [1.0, 0.0])


def test_unnorm_key_errors_list_keys():
    stats = {"b_set": {}, "a_set": {}}
    with pytest.raises(ValueError, match=r"several datasets \['a_set', 'b_set'\]"):
        check_unnorm_key(stats, None)
    with pytest.raises(ValueError, match=r"'zzz' not found; available keys: \['a_set', 'b_set'\]"):
        check_unnorm_key(stats, "zzz")
    assert check_unnorm_key({"only": {}}, None) == "only"
    with pytest.raises(ValueError, match="no norm_stats"):
        check_unnorm_key({}, None)


def test_image_changes_logits_and_action(tiny):
    """Guards openvla #346 (newer transformers silently ignoring the image)."""
    model, processor = tiny
    black, noise = np.zeros((224, 224, 3), np.uint8), _images(1, seed=5)[0]
    prompts = [build_prompt(INSTRUCTIONS[0])] * 2
    inputs = processor(prompts, [black, noise])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert (logits[0, -1] - logits[1, -1]).abs().max() > 1e-3
    actions = model.predict_action(**inputs)
    assert not np.array_equal(actions[0], actions[1])


def test_bad_inputs(tiny):
    model, processor = tiny
    inputs = processor([build_prompt("a")], _images(1))
    with pytest.raises(ValueError, match=r"pixel_values: got shape \(1, 3, 224, 224\)"):
        model.predict_action(inputs["pixel_values"][:, :3], inputs["input_ids"])
    with pytest.raises(ValueError, match=r"expected \(B, 6, 224, 224\)"):
        model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 6, 112, 112))
    with pytest.raises(ValueError, match="greedy"):
        model.predict_action(**inputs, do_sample=True)


def test_policy_predict_batch(tiny):
    model, processor = tiny
    policy = OpenVLAPolicy(model, processor)
    images = _images(3)
    out = policy.predict_batch(images, INSTRUCTIONS[:3])
    assert out.shape == (3, 1, 7) and out.dtype == np.float32 and policy.action_chunk == 1
    ref = model.predict_action(**processor([build_prompt(t) for t in INSTRUCTIONS[:3]], images))
    np.testing.assert_allclose(out[:, 0], ref.astype(np.float32))
    with pytest.raises(ValueError, match=r"images\[0\] has shape \(256, 256, 3\)"):
        policy.predict_batch([np.zeros((256, 256, 3), np.uint8)], ["a"])
    with pytest.raises(ValueError, match=r"images\[0\] has shape \(224, 224, 4\)"):
        policy.predict_batch([np.zeros((224, 224, 4), np.uint8)], ["a"])
    with pytest.raises(ValueError, match="instruction"):
        policy.predict_batch(images[:1], [""])
    with pytest.raises(ValueError, match="2 images and 1 instructions"):
        policy.predict_batch(images[:2], ["a"])


def test_policy_unnorm_key_validation(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match=r"available keys: \['tiny_dataset'\]"):
        OpenVLAPolicy(model, processor, unnorm_key="libero_spatial")


def test_policy_from_pretrained(tmp_path):
    model, processor = build_tiny(tmp_path / "ck", seed=4)
    policy = OpenVLAPolicy.from_pretrained(tmp_path / "ck", attn_implementation="eager")
    assert policy.model.config._attn_implementation == "eager"
    images = _images(2)
    ref = model.predict_action(**processor([build_prompt(t) for t in INSTRUCTIONS[:2]], images))
    np.testing.assert_allclose(policy.predict_batch(images, INSTRUCTIONS[:2])[:, 0], ref, atol=1e-6)
    with pytest.warns(UserWarning, match="flash_attention_2 requested"):
        fallback = OpenVLAPolicy.from_pretrained(tmp_path / "ck", attn_implementation="flash_attention_2")
    assert fallback.model.config._attn_implementation == "sdpa"
