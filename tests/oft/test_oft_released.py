"""A tiny checkpoint written in the released OpenVLA-OFT layout loads unmodified and acts like the fork."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stamo_vla.vla import CheckpointError, OpenVLAOFTForActionPrediction, OpenVLAProcessor, build_tiny
from stamo_vla.vla.oft_modules import L1RegressionActionHead, ProprioProjector

HIDDEN = 32  # tiny_config's LLM hidden size
WIDTH = 48
STEP = 150000


def write_released(directory, prefix: str = "module.", proprio: bool = True) -> dict:
    """The released directory: merged weights + statistics + the two ``*--<step>_checkpoint.pt`` head files.

    Head files are state dicts of DDP-wrapped modules (keys ``module.model.fc1.weight`` ...), the action head in
    bf16 and the projector in fp32, as upstream saves them. Returns the heads' tensors (without prefix).
    """
    build_tiny(directory, seed=0)
    (directory / ".stamo_vla_output.json").unlink(missing_ok=True)  # not part of the released layout
    torch.manual_seed(3)
    head = L1RegressionActionHead(HIDDEN, 7, WIDTH)
    state = {k: v.to(torch.bfloat16) for k, v in head.state_dict().items()}
    torch.save({prefix + k: v for k, v in state.items()}, directory / f"action_head--{STEP}_checkpoint.pt")
    out = {"action_head": state}
    if proprio:
        proj = ProprioProjector(8, HIDDEN).state_dict()
        torch.save(
            {prefix + k: v for k, v in proj.items()}, directory / f"proprio_projector--{STEP}_checkpoint.pt"
        )
        out["proprio_projector"] = proj
    stats = json.loads((directory / "dataset_statistics.json").read_text())
    stats["libero_spatial_no_noops"] = stats.pop(next(iter(stats)))
    stats["libero_spatial_no_noops"]["proprio"] = {
        "q01": [-1.0] * 8,
        "q99": [1.0] * 8,
        "min": [-2.0] * 8,
        "max": [2.0] * 8,
        "mean": [0.0] * 8,
        "std": [1.0] * 8,
    }
    (directory / "dataset_statistics.json").write_text(json.dumps(stats))
    return out


def _inputs(directory, instructions):
    processor = OpenVLAProcessor.from_pretrained(directory)
    rng = np.random.default_rng(0)
    prompts = [f"In: What action should the robot take to {t}?\nOut:" for t in instructions]
    primary = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in instructions]
    wrist = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in instructions]
    inputs = processor(prompts, primary)
    inputs["pixel_values"] = torch.cat(
        [inputs["pixel_values"], processor.image_processor(wrist)["pixel_values"]], dim=1
    )
    return inputs


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    directory = tmp_path_factory.mktemp("released") / "openvla-7b-oft-finetuned-libero-spatial"
    heads = write_released(directory)
    return directory, heads


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_loads_with_every_key_and_predicts_the_8x7_chunk(tmp_path, prefix):
    heads = write_released(tmp_path / "ck", prefix=prefix)
    model = OpenVLAOFTForActionPrediction.from_pretrained(tmp_path / "ck")
    for name, state in heads.items():  # every key landed (no missing, no unexpected), values unchanged
        loaded = getattr(model.oft, name).state_dict()
        assert sorted(loaded) == sorted(state)
        for key, value in state.items():
            torch.testing.assert_close(loaded[key], value.to(loaded[key].dtype))
    assert model.action_chunk == 8 and model.num_images == 2 and model.uses_proprio
    inputs = _inputs(tmp_path / "ck", ["pick up the black bowl"])
    actions = model.predict_action(
        **inputs, unnorm_key="libero_spatial_no_noops", proprio=np.zeros(8, np.float32), do_sample=False
    )
    assert actions.shape == (1, 8, 7) and np.isfinite(actions).all()


def test_output_is_the_head_on_the_fork_layout_unnormalized_with_the_statistics(released):
    directory, _ = released
    model = OpenVLAOFTForActionPrediction.from_pretrained(directory)
    inputs = _inputs(directory, ["pick up the black bowl"])
    proprio = np.linspace(-0.5, 0.5, 8).astype(np.float32)
    normalized = model.predict_action(**inputs, proprio=proprio, unnormalize=False)
    actions = model.predict_action(**inputs, proprio=proprio)
    stats = model.norm_stats["libero_spatial_no_noops"]["action"]
    q01, q99 = np.array(stats["q01"]), np.array(stats["q99"])
    mask = np.array(stats["mask"])
    np.testing.assert_allclose(
        actions, np.where(mask, 0.5 * (normalized + 1) * (q99 - q01 + 1e-8) + q01, normalized)
    )

    # the fork's layout written out: [BOS, 256 primary + 256 wrist patches, proprio, prompt[1:], "▁", 56 zero
    # embeddings, EOS], bidirectional attention, the head over hidden[NUM_PATCHES + NUM_PROMPT_TOKENS : +56]
    vla = model.vla
    ids = inputs["input_ids"][0].tolist() + [vla.config.empty_token_id]
    with torch.no_grad():
        text = vla.get_input_embeddings()(torch.tensor([ids + [1] * 56 + [2]]))
        text[:, len(ids) : len(ids) + 56] = 0
        pixels = inputs["pixel_values"]
        patches = torch.cat([vla.projector(vla.vision_backbone(pixels[:, i : i + 6])) for i in (0, 6)], dim=1)
        token = model.oft.proprio_projector(torch.from_numpy(proprio)[None])[:, None]
        embeds = torch.cat([text[:, :1], patches, token, text[:, 1:]], dim=1)
        hidden = vla.get_decoder()(
            inputs_embeds=embeds, attention_mask=torch.zeros(1, 1, embeds.shape[1], embeds.shape[1])
        ).last_hidden_state
        num_patches, num_prompt_tokens = patches.shape[1] + 1, len(ids) - 1
        start = num_patches + num_prompt_tokens
        expected = model.oft.action_head(hidden[:, start : start + 56])
    np.testing.assert_allclose(normalized, expected.numpy(), atol=1e-5)


def test_a_padded_batch_equals_one_row_at_a_time(released):
    directory, _ = released
    model = OpenVLAOFTForActionPrediction.from_pretrained(directory)
    texts = ["pick up the black bowl", "open the top drawer of the cabinet and put the bowl inside"]
    inputs = _inputs(directory, texts)
    assert inputs["attention_mask"].sum(1).tolist()[0] < inputs["attention_mask"].shape[1]  # row 0 is padded
    proprio = np.random.default_rng(1).uniform(-1, 1, (2, 8)).astype(np.float32)
    batched = model.predict_action(**inputs, proprio=proprio, unnormalize=False)
    for r in range(2):
        n = int(inputs["attention_mask"][r].sum())
        alone = model.predict_action(
            input_ids=inputs["input_ids"][r : r + 1, :n],
            attention_mask=inputs["attention_mask"][r : r + 1, :n],
            pixel_values=inputs["pixel_values"][r : r + 1],
            proprio=proprio[r],
            unnormalize=False,
        )
        np.testing.assert_allclose(alone[0], batched[r], atol=1e-5)


def test_missing_or_mismatched_head_files_name_the_file(tmp_path):
    write_released(tmp_path / "ck")
    head = tmp_path / "ck" / f"action_head--{STEP}_checkpoint.pt"
    state = torch.load(head, weights_only=True)
    state["module.model.extra.weight"] = torch.zeros(2)
    torch.save(state, head)
    with pytest.raises(CheckpointError, match=rf"action_head--{STEP}_checkpoint.pt does not fit.*unexpected"):
        OpenVLAOFTForActionPrediction.from_pretrained(tmp_path / "ck")

    state.pop("module.model.extra.weight")
    state["module.model.fc1.weight"] = torch.zeros(WIDTH, HIDDEN * 7 + 1)
    torch.save(state, head)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        OpenVLAOFTForActionPrediction.from_pretrained(tmp_path / "ck")

    head.unlink()
    with pytest.raises(CheckpointError, match=r"action_head--<step>_checkpoint.pt is missing"):
        OpenVLAOFTForActionPrediction.from_pretrained(tmp_path / "ck")

    write_released(tmp_path / "no_proprio", proprio=False)
    with pytest.raises(CheckpointError, match=r"proprio_projector--<step>_checkpoint.pt is missing"):
        OpenVLAOFTForActionPrediction.from_pretrained(tmp_path / "no_proprio", use_proprio=True)
    with pytest.warns(UserWarning, match="no proprio_projector--<step>_checkpoint.pt"):
        model = OpenVLAOFTForActionPrediction.from_pretrained(tmp_path / "no_proprio")
    assert not model.uses_proprio
    assert not OpenVLAOFTForActionPrediction.from_pretrained(
        tmp_path / "no_proprio", use_proprio=False
    ).uses_proprio


@pytest.mark.slow
def test_run_libero_eval_runs_a_released_directory_with_ofts_protocol(released, tmp_path):
    import types

    from oft_helpers import RecordingPool

    from stamo_vla.evaluation import EvalConfig, ReleasedOFTPolicyConfig, build_policy
    from stamo_vla.libero.evaluation import evaluate
    from stamo_vla.libero.protocol import postprocess_action

    directory, _ = released
    wait, max_steps = 2, 10
    cfg = EvalConfig(
        policy=ReleasedOFTPolicyConfig(checkpoint=str(directory), device="cpu"),
        suites=["libero_spatial"],
        num_trials_per_task=1,
        max_steps=max_steps,
        num_steps_wait=wait,
        video="none",
        num_workers=2,
        progress=False,
        output_dir=str(tmp_path / "eval"),
    )
    policy = build_policy(cfg)
    inner = policy.policy
    assert type(inner).__name__ == "OFTPolicy" and policy.action_chunk == 8 and policy.uses_wrist_image
    assert inner.uses_proprio and inner.unnorm_key == "libero_spatial_no_noops"
    calls, predict = [], inner.predict_batch

    def spy(images, instructions, **obs):
        out = predict(images, instructions, **obs)
        calls.append((len(images), len(obs["wrist_images"]), obs["proprio"].shape, out))
        return out

    inner.predict_batch = spy
    pool = RecordingPool()
    catalog = types.SimpleNamespace(task_count=lambda suite: 2, task_instruction=lambda suite, t: f"task {t}")
    summary = evaluate(cfg, pool_factory=lambda n: pool, policy=policy, catalog=catalog)
    assert summary["overall"]["episodes"] == 2 and cfg.center_crop is True  # upstream's eval crops
    # the whole 8-step chunk runs open loop: calls at steps 0 and 8, both episodes batched in each
    assert [c[:3] for c in calls] == [(2, 2, (2, 8))] * 2
    stepped = [a for task, t, a in sorted(pool.received, key=lambda r: r[:2]) if task == 0 and t >= wait]
    for k, action in enumerate(stepped):
        np.testing.assert_allclose(action, postprocess_action(calls[k // 8][3][0, k % 8]))
