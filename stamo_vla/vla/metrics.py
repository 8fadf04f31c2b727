"""Action-token loss and upstream's finetune metrics, computed from logits, for any causal VLA (the one copy:
fine-tuning with the adapter and full training of a base both use it).

The LLM sequence may hold more positions than the text (OpenVLA inserts its image tokens after BOS); with
``offset = L - T`` the logit at position ``j + offset`` predicts text token ``j + 1`` for every j >= 1 - offset.
Action tokens are the ids in ``(vocab_size - (n_bins + 1), vocab_size)``; EOS after them is supervised (it counts
in the loss) but is not an action token (it does not count in accuracy or L1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stamo_vla.keys import IGNORE_INDEX


def action_bin_centers(n_bins: int = 256, device=None) -> torch.Tensor:
    bins = torch.linspace(-1, 1, n_bins, dtype=torch.float64)
    return ((bins[:-1] + bins[1:]) / 2).to(device=device, dtype=torch.float32)


def decode_action_tokens(token_ids: torch.Tensor, vocab_size: int, n_bins: int = 256) -> torch.Tensor:
    """Upstream ActionTokenizer decoding in torch: clip(vocab_size - id - 1, 0, n_bins - 2) -> bin centre.

    Args:
        token_ids: action token ids (any shape).
        vocab_size: the LLM's vocabulary size.
        n_bins: action bins.
    """
    centers = action_bin_centers(n_bins, token_ids.device)
    idx = torch.clamp(vocab_size - token_ids - 1, 0, n_bins - 2)
    return centers[idx]


def action_token_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    n_bins: int = 256,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over supervised text tokens (actions + EOS) and upstream's action metrics.

    Args:
        logits: (B, L, V) over the LLM sequence.
        input_ids, labels: (B, T) text ids and labels (IGNORE_INDEX where unsupervised).
        vocab_size: base vocabulary size (32000 for Llama-2); action tokens are ids > vocab_size - (n_bins + 1).

    Returns:
        The loss (0 with a zero gradient path when nothing is supervised, e.g. an all action-free batch) and
        metrics ``loss_action`` (that loss), ``action_accuracy``, ``action_l1`` (normalized units, bin centres)
        and ``num_action_tokens``.
    """
    offset = logits.shape[1] - input_ids.shape[1]
    pred_logits = logits[:, offset : offset + input_ids.shape[1] - 1]
    target = labels[:, 1:]
    n_supervised = (target != IGNORE_INDEX).sum()
    ce = F.cross_entropy(
        pred_logits.reshape(-1, pred_logits.shape[-1]).float(),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    loss = ce / n_supervised.clamp(min=1)
    with torch.no_grad():
        preds = pred_logits.argmax(-1)
        begin = vocab_size - (n_bins + 1)
        mask = (target > begin) & (target < vocab_size)
        num_action = mask.sum()
        n_action = num_action.clamp(min=1)
        accuracy = ((preds == target) & mask).sum() / n_action
        if mask.any():
            l1 = torch.abs(
                decode_action_tokens(preds[mask], vocab_size, n_bins)
                - decode_action_tokens(target[mask], vocab_size, n_bins)
            ).mean()
        else:
            l1 = torch.zeros(())
    metrics = {
        "loss_action": loss.item(),
        "action_accuracy": accuracy.item(),
        "action_l1": l1.item(),
        "num_action_tokens": int(num_action),
    }
    return loss, metrics
