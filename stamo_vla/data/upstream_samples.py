"""Our RLDS samples, with their cached StaMo targets, in the form upstream's training scripts read.

Upstream OpenVLA's and OpenVLA-OFT's ``vla-scripts/finetune.py`` turn one RLDS frame (``rlds_batch``: a window of
one observation, the action chunk, the instruction) into a model sample with their ``RLDSBatchTransform``, and
their ``PaddedCollatorForActionPrediction`` pads samples into a batch. Their RLDS pipeline knows neither the
episode nor the future frame of a sample, so it cannot carry StaMo targets. `UpstreamSamples` reads the same data
with our reader (same frames, normalization and action chunks; `stamo_vla.data.dataset`), hands each sample to the
script's own batch transform, and adds the cached states of frames t and t+h; `collate_with_targets` stacks them
beside what the script's collator returns. The patches under ``patches/`` use both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from stamo_vla import keys as K
from stamo_vla.data.config import DataConfig


def as_rlds_batch(sample: dict) -> dict:
    """One of our samples as upstream's ``RLDSBatchTransform`` reads it (a window of one observation)."""
    observation = {"image_primary": sample[K.IMAGE][None]}
    if K.WRIST_IMAGE in sample:
        observation["image_wrist"] = sample[K.WRIST_IMAGE][None]
    if K.PROPRIO in sample:
        observation["proprio"] = np.asarray(sample[K.PROPRIO], np.float32)[None]
    return {
        "dataset_name": sample[K.DATASET_NAME].encode(),
        "action": np.asarray(sample[K.ACTION], np.float32),
        "observation": observation,
        "task": {"language_instruction": sample[K.INSTRUCTION].encode()},
    }


class UpstreamSamples(IterableDataset):
    """Samples of `data` (a `DataConfig` with ``use_target_cache``) passed through an upstream batch transform,
    each with ``state`` / ``future_state`` ((N, D) float32: the cached states of frames t and t+h).

    ``dataset_statistics`` is what upstream's ``save_dataset_statistics`` writes next to its checkpoints.
    """

    def __init__(self, data: DataConfig, batch_transform: Callable[[dict], dict]) -> None:
        if not data.use_target_cache:
            raise ValueError(
                "UpstreamSamples adds cached StaMo targets: set use_target_cache=True (and target_cache_root) "
                "after `stamo-vla cache-targets`."
            )
        self.data = data
        self.batch_transform = batch_transform
        self.samples = data.build()
        self.dataset_statistics = self.samples.dataset_statistics

    def __iter__(self) -> Iterator[dict]:
        for sample in self.samples:
            out = self.batch_transform(as_rlds_batch(sample))
            out[K.STATE] = torch.as_tensor(sample[K.STATE])
            out[K.FUTURE_STATE] = torch.as_tensor(sample[K.FUTURE_STATE])
            yield out


def collate_with_targets(collator: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """`collator` (upstream's padding collator, which keeps only the keys it knows) plus the stacked
    ``state`` / ``future_state`` of the samples: (B, N, D) float32."""

    def collate(instances: list[dict]) -> dict:
        targets = {key: torch.stack([x.pop(key) for x in instances]) for key in (K.STATE, K.FUTURE_STATE)}
        return {**collator(instances), **targets}

    return collate
