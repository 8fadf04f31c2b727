"""Training samples -> OpenVLA token sequences, and the right-padding collator.

Training ids are built directly as `prompt ids + [empty_token_id] + 7 action ids + [EOS]` instead of
upstream's decode-then-retokenize of `"...Out: " + action_chars + "</s>"`; for tokenizers where the action
characters are single tokens (Llama-2, the tiny tokenizer) both routes give the same ids (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from stamo_vla.keys import (
    ACTION,
    ACTIONS,
    ATTENTION_MASK,
    HAS_ACTION,
    IGNORE_INDEX,
    IMAGE,
    INPUT_IDS,
    INSTRUCTION,
    LABELS,
    PIXEL_VALUES,
    PROMPT_LENGTH,
)

_CONSUMED = {IMAGE, INSTRUCTION, ACTION}


class OpenVLABatchTransform:
    """Turn one sample dict into model tensors; `collate` pads a list of them into a batch.

    Args:
        processor: an `OpenVLAProcessor` (tokenizer, image processor, `empty_token_id`).
        action_tokenizer: an `ActionTokenizer` for the same base vocabulary.
        predict_stop_token: supervise EOS after the action tokens (upstream default True).
    """

    def __init__(self, processor: Any, action_tokenizer: Any, predict_stop_token: bool = True):
        self.processor = processor
        self.action_tokenizer = action_tokenizer
        self.predict_stop_token = predict_stop_token
        self.pad_token_id = processor.tokenizer.pad_token_id
        self.eos_token_id = processor.tokenizer.eos_token_id
        self.max_length = int(getattr(processor.tokenizer, "model_max_length", 2048) or 2048)
        if self.pad_token_id is None:
            raise ValueError("OpenVLABatchTransform: the tokenizer has no pad token; add one (<PAD>).")

    def token_ids(self, instruction: str, action: np.ndarray) -> list[int]:
        """Full training ids for one (instruction, normalized action (A,)) pair."""
        action_ids = self.action_tokenizer.encode_to_ids(np.asarray(action, dtype=np.float64)).tolist()
        ids = self.processor.prompt_ids(instruction) + [self.processor.empty_token_id] + action_ids
        return ids + [self.eos_token_id]

    def __call__(self, sample: dict) -> dict:
        """Sample (IMAGE (H, W, 3) uint8, INSTRUCTION str, ACTION (K, A) normalized, extras) -> tensors.

        Returns:
            PIXEL_VALUES (6, 224, 224), INPUT_IDS (T,), LABELS (T,) (-100 except the action tokens and
            EOS; all -100 when HAS_ACTION is False or the action is NaN), ACTIONS (K, A), PROMPT_LENGTH
            (text tokens before the first action token, so a StaMo head finds its readout position even
            when nothing is supervised), plus the sample's other keys unchanged.
        """
        for key in (IMAGE, INSTRUCTION, ACTION):
            if key not in sample:
                raise KeyError(f"OpenVLABatchTransform: sample lacks '{key}'; got keys {sorted(sample)}.")
        actions = np.asarray(sample[ACTION], dtype=np.float32)
        actions = actions[None] if actions.ndim == 1 else actions
        has_action = bool(sample.get(HAS_ACTION, True)) and bool(np.isfinite(actions[0]).all())
        # action-free samples keep the same sequence layout (placeholder zeros) with nothing supervised
        first = actions[0] if has_action else np.zeros(actions.shape[1], dtype=np.float32)
        ids = torch.tensor(self.token_ids(sample[INSTRUCTION], first), dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        n_supervised = actions.shape[1] + 1
        if has_action:
            labels[-n_supervised:] = ids[-n_supervised:]
            if not self.predict_stop_token:
                labels[-1] = IGNORE_INDEX
        out = {k: v for k, v in sample.items() if k not in _CONSUMED}
        out.update(
            {
                PIXEL_VALUES: self.processor.image_processor(sample[IMAGE])["pixel_values"][0],
                INPUT_IDS: ids,
                LABELS: labels,
                ACTIONS: torch.from_numpy(actions),
                HAS_ACTION: has_action,
                PROMPT_LENGTH: len(ids) - n_supervised,
            }
        )
        return out

    def collate(self, items: Sequence[dict]) -> dict:
        """Right-pad INPUT_IDS (pad id) and LABELS (-100), build ATTENTION_MASK, stack everything else."""
        if not items:
            raise ValueError("collate: got an empty list of samples.")
        length = min(max(len(it[INPUT_IDS]) for it in items), self.max_length)
        ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.bool)
        for i, it in enumerate(items):
            n = min(len(it[INPUT_IDS]), length)  # truncate to model_max_length like upstream
            ids[i, :n], labels[i, :n], mask[i, :n] = it[INPUT_IDS][:n], it[LABELS][:n], True
        batch = {INPUT_IDS: ids, LABELS: labels, ATTENTION_MASK: mask}
        for key in items[0]:
            if key not in batch:
                batch[key] = _stack([it[key] for it in items], key)
        return batch

    def collate_samples(self, samples: Sequence[dict]) -> dict:
        """`collate([self(s) for s in samples])`: usable directly as a DataLoader collate_fn on raw samples."""
        return self.collate([self(s) for s in samples])


def _stack(values: list, key: str) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(values))
    if isinstance(first, (bool, np.bool_)):
        return torch.tensor([bool(v) for v in values])
    if isinstance(first, (int, float, np.integer, np.floating)):
        return torch.tensor(values)
    return list(values)  # strings and other objects stay per-sample lists
