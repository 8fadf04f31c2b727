"""The calls patches/ adds to upstream's finetune.py, run on the tiny model: attach from a target cache, upstream's
batch transform fed by our reader with the cached states, and the StaMo loss from the script's own forward."""

from __future__ import annotations

import pytest
import torch

from stamo_vla import keys as K
from stamo_vla.adapter import StaMoAdapterConfig
from stamo_vla.adapter.attach import target_shape_of
from stamo_vla.adapter.external import StaMoAuxiliaryLoss, attach_from_cache
from stamo_vla.data.config import DataConfig
from stamo_vla.data.upstream_samples import UpstreamSamples, collate_with_targets

DATASET = "toy_push_no_noops"  # written by the toy_data_root fixture (tests/training/conftest.py)


class UpstreamStyleTransform:
    """Reads an ``rlds_batch`` the way upstream's RLDSBatchTransform does and returns its keys only (no prompt
    length); the tokens come from our transform, which computes upstream's."""

    def __init__(self, ours):
        self.ours, self.seen = ours, []

    def __call__(self, rlds_batch: dict) -> dict:
        self.seen.append(rlds_batch)
        sample = {
            K.IMAGE: rlds_batch["observation"]["image_primary"][0],
            K.INSTRUCTION: rlds_batch["task"]["language_instruction"].decode().lower(),
            K.ACTION: rlds_batch["action"][0],
        }
        out = self.ours(sample)
        return {key: out[key] for key in (K.PIXEL_VALUES, K.INPUT_IDS, K.LABELS)}


@pytest.mark.slow
def test_the_patched_training_step_adds_the_adapters_stamo_loss(tmp_path, toy_data_root, tiny_stamo_dir):
    from stamo_vla.data.target_cache import build_target_cache, read_manifest, target_statistics
    from stamo_vla.stamo import StaMoEncoder
    from stamo_vla.vla import ActionTokenizer, build_tiny

    cache = tmp_path / "caches" / DATASET
    build_target_cache(toy_data_root, DATASET, StaMoEncoder.from_pretrained(tiny_stamo_dir), out_dir=cache)
    base, processor = build_tiny(seed=0)
    cfg = StaMoAdapterConfig(target="motion", head_width=16, lora_rank=4, horizon=2)
    stamo = attach_from_cache(base, cfg, [cache], seed=0)
    manifest = read_manifest(cache)
    assert target_shape_of(stamo) == (manifest["num_state_tokens"], manifest["state_dim"])
    assert stamo.provenance.stamo_fingerprint == manifest["encoder_fingerprint"]
    stats = target_statistics([cache], horizon=2, difference=True)
    torch.testing.assert_close(stamo.head.target_mean, torch.from_numpy(stats["mean"]))

    data = DataConfig(
        data_root_dir=str(toy_data_root),
        dataset_names=[DATASET],
        horizon=2,
        shuffle_buffer_size=8,
        use_target_cache=True,
        target_cache_root=str(cache.parent),
    )
    ours = cfg.action_head.batch_transform(processor, ActionTokenizer(base.action_vocab_size))
    transform = UpstreamStyleTransform(ours)
    samples = UpstreamSamples(data, transform)
    assert set(samples.dataset_statistics) == {DATASET}
    loader = torch.utils.data.DataLoader(samples, batch_size=3, collate_fn=collate_with_targets(ours.collate))
    batch = next(iter(loader))
    first = transform.seen[0]
    assert first["observation"]["image_primary"].shape == (1, 224, 224, 3) and first["action"].shape == (1, 7)
    assert first["dataset_name"] == DATASET.encode()
    assert batch[K.STATE].shape == batch[K.FUTURE_STATE].shape == (3, *target_shape_of(stamo))

    # the script's own forward (with hidden states) plus the auxiliary module equals the adapter's forward
    aux = StaMoAuxiliaryLoss(stamo)
    out = stamo.vla(
        input_ids=batch[K.INPUT_IDS],
        attention_mask=batch[K.ATTENTION_MASK],
        pixel_values=batch[K.PIXEL_VALUES],
        labels=batch[K.LABELS],
        output_hidden_states=True,
    )
    loss_aux, metrics = aux(out.hidden_states[-1], batch)
    _, adapter_metrics = stamo(batch)
    assert metrics["loss_future"] == pytest.approx(adapter_metrics["loss_future"], rel=1e-5)
    (out.loss + loss_aux).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aux.parameters() if p.requires_grad)
    assert [n for n, _ in aux.named_parameters()] == [f"head.{n}" for n, _ in stamo.head.named_parameters()]


def test_upstream_samples_need_a_target_cache(toy_data_root):
    with pytest.raises(ValueError, match="set use_target_cache=True"):
        UpstreamSamples(DataConfig(data_root_dir=str(toy_data_root), dataset_names=[DATASET]), lambda b: b)


def test_the_auxiliary_loss_needs_a_head():
    from stamo_vla.adapter import attach
    from stamo_vla.vla import build_tiny

    with pytest.raises(ValueError, match="target='none' has no head"):
        StaMoAuxiliaryLoss(attach(build_tiny(seed=0)[0], StaMoAdapterConfig(target="none", lora_rank=2)))
