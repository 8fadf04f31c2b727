"""Upstream finetune metrics over action tokens only (reference §1.6)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def action_metrics(
    logits: torch.Tensor, labels: torch.Tensor, num_vision_tokens: int, vocab_size: int, n_bins: int = 256
) -> dict[str, float]:
    """Accuracy, L1 (normalized units) and CE over action tokens, as upstream's finetune loop logs them.

    Args:
        logits: (B, n_patches + T, V) multimodal logits.
        labels: (B, T) TEXT labels (not the multimodal ones), -100 where unsupervised.
        num_vision_tokens: image tokens inserted after BOS.
        vocab_size: base vocab size the action bins count back from (32000 for Llama-2).
        n_bins: action bins; ids > vocab_size - (n_bins + 1) are action tokens.

    Returns:
        `action_accuracy`, `action_l1`, `loss_action` (0.0 when the batch has no action tokens) and
        `num_action_tokens`.
    """
    from stamo_vla.vla.action_tokenizer import ActionTokenizer

    begin = vocab_size - (n_bins + 1)
    # logit at num_vision_tokens + j predicts text token j + 1
    action_logits = logits[:, num_vision_tokens:-1]
    gt = labels[:, 1:].to(action_logits.device)
    mask = gt > begin
    n = int(mask.sum())
    if n == 0:
        return {"action_accuracy": 0.0, "action_l1": 0.0, "loss_action": 0.0, "num_action_tokens": 0}
    preds = action_logits.argmax(-1)
    accuracy = float(((preds == gt) & mask).sum()) / n
    tokenizer = ActionTokenizer(vocab_size, bins=n_bins)
    pred_actions = torch.as_tensor(tokenizer.decode_token_ids_to_actions(preds[mask].cpu().numpy()))
    gt_actions = torch.as_tensor(tokenizer.decode_token_ids_to_actions(gt[mask].cpu().numpy()))
    loss_action = F.cross_entropy(action_logits[mask].float(), gt[mask])
    return {
        "action_accuracy": accuracy,
        "action_l1": float(F.l1_loss(pred_actions, gt_actions)),
        "loss_action": float(loss_action.detach()),
        "num_action_tokens": n,
    }
