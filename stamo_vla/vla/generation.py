"""Batched greedy action decoding with a KV cache, and BOUNDS_Q99 un-normalization.

Upstream `predict_action` refuses batches (openvla #228) because image tokens sit after BOS while HF
generation assumes one padding side. Here every row is re-packed as `[pad.., BOS, patches, prompt, ▁]`
(LEFT padding of the whole multimodal sequence) with position ids counted over real tokens only, so a row's
logits do not depend on the other rows, and decoding runs a short greedy loop over the LLM with a cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stamo_vla.vla.action_tokenizer import ActionTokenizer


def check_unnorm_key(norm_stats: dict | None, unnorm_key: str | None) -> str:
    """Resolve the dataset key whose statistics un-normalize actions.

    Raises:
        ValueError: no statistics, several datasets and no key, or an unknown key; the message lists
            the available keys.
    """
    keys = sorted(norm_stats or {})
    if not keys:
        raise ValueError(
            "predict_action: the model has no norm_stats; put dataset_statistics.json next to the weights, "
            "set model.norm_stats, or pass unnormalize=False."
        )
    if unnorm_key is None:
        if len(keys) != 1:
            raise ValueError(
                f"predict_action: the model was trained on several datasets {keys}; pass unnorm_key=<one of them>."
            )
        return keys[0]
    if unnorm_key not in norm_stats:
        raise ValueError(f"predict_action: unnorm_key={unnorm_key!r} not found; available keys: {keys}.")
    return unnorm_key


def unnormalize_actions(normalized: np.ndarray, action_stats: dict, eps: float = 0.0) -> np.ndarray:
    """BOUNDS_Q99: `where(mask, 0.5 * (a + 1) * (q99 - q01 + eps) + q01, a)`.

    OpenVLA uses no epsilon; OpenVLA-OFT's `_unnormalize_actions` adds ``eps = 1e-8``.

    Args:
        normalized: normalized actions in [-1, 1] (..., A).
        action_stats: the dataset's action statistics (q01, q99, mask).
        eps: added to the q99 - q01 range.
    """
    q01, q99 = np.asarray(action_stats["q01"]), np.asarray(action_stats["q99"])
    mask = np.asarray(action_stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    return np.where(mask, 0.5 * (normalized + 1.0) * (q99 - q01 + eps) + q01, normalized)


def pack_left(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pixel_values: torch.Tensor
):
    """Multimodal prefill inputs, left padded: (embeds, mask, position_ids), each (B, S[, D]).

    Args:
        model: the OpenVLA model.
        input_ids: prompt ids (B, T).
        attention_mask: their mask (B, T), or None (no padding).
        pixel_values: the processor's images.
    """
    empty_id = model.config.empty_token_id
    pad_id = model.config.pad_token_id
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    rows = []
    for ids, m in zip(input_ids, attention_mask.bool()):
        row = ids[m]
        if row.numel() == 0:
            raise ValueError("predict_action: a row of input_ids has no attended tokens.")
        if row[-1].item() != empty_id:  # training put "▁" after "Out:" before the action tokens
            row = torch.cat([row, row.new_tensor([empty_id])])
        rows.append(row)
    longest = max(len(r) for r in rows)
    ids = input_ids.new_full((len(rows), longest), pad_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    mm = model.embed_multimodal(ids, pixel_values, mask)
    embeds, mm_mask = mm.inputs_embeds, mm.attention_mask
    # roll each row right by its padding so the real tokens end at the last position
    seq = embeds.shape[1]
    shift = seq - mm_mask.sum(1)
    index = (torch.arange(seq, device=embeds.device)[None] - shift[:, None]) % seq
    embeds = torch.gather(embeds, 1, index[..., None].expand_as(embeds))
    mm_mask = torch.gather(mm_mask, 1, index)
    position_ids = (mm_mask.cumsum(1) - 1).clamp(min=0)
    return embeds, mm_mask, position_ids


@torch.no_grad()
def greedy_decode(
    model, embeds, attention_mask, position_ids, num_tokens: int, return_hidden: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding of `num_tokens` ids per row with a KV cache: (B, num_tokens) long.

    With `return_hidden`, also the last-layer hidden state (B, D) at the last prompt position (the one that
    predicts the first action token), taken from the prefill pass at no extra LLM cost.

    Args:
        model: the OpenVLA model.
        embeds: prefill embeddings (B, S, D) (`pack_left`).
        attention_mask: their mask (B, S).
        position_ids: their positions (B, S).
        num_tokens: ids to decode per row.
        return_hidden: also return the prefill's last hidden state.
    """
    from transformers import DynamicCache

    lm = model.language_model
    cache = DynamicCache(config=lm.config)
    out = lm(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
        output_hidden_states=return_hidden,
    )
    hidden = out.hidden_states[-1][:, -1] if return_hidden else None
    tokens = [out.logits[:, -1].argmax(-1)]
    positions = position_ids[:, -1:]
    for _ in range(num_tokens - 1):
        attention_mask = torch.cat(
            [attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1
        )
        positions = positions + 1
        out = lm(
            input_ids=tokens[-1][:, None],
            attention_mask=attention_mask,
            position_ids=positions,
            cache=out.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        tokens.append(out.logits[:, -1].argmax(-1))
    ids = torch.stack(tokens, dim=1)
    return (ids, hidden) if return_hidden else ids


def predict_action(
    model,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    unnorm_key: str | None = None,
    unnormalize: bool = True,
    action_dim: int | None = None,
    do_sample: bool = False,
    return_hidden: bool = False,
    **unused: Any,
) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
    """Predict one action per row (batched greedy decoding).

    Args:
        model: an `OpenVLAForActionPrediction`.
        pixel_values: (B, 6, 224, 224) float from the processor.
        input_ids: (B, T) prompt ids (BOS first; left or right padded; "▁" appended when missing).
        attention_mask: (B, T); None = no padding.
        unnorm_key: dataset key of `model.norm_stats`; None is fine when there is exactly one.
        unnormalize: False returns the normalized bin-centre actions.
        action_dim: number of action tokens when `unnormalize=False` (default: from the stats, else 7).
        do_sample: must be False (greedy only, like upstream's LIBERO evaluation).
        return_hidden: also return the last-layer hidden state (B, D) at the position that predicts the first
            action token (what a StaMo head reads); it comes from the prefill pass, so it costs nothing extra.

    Returns:
        (B, action_dim) float64 actions; the gripper (mask False) stays the raw bin centre (~0..1).
    """
    if do_sample:
        raise ValueError("predict_action: only greedy decoding is supported (do_sample=False).")
    if unused:
        raise TypeError(f"predict_action: unexpected arguments {sorted(unused)}.")
    stats = None
    if unnormalize:
        stats = model.norm_stats[check_unnorm_key(model.norm_stats, unnorm_key)]["action"]
        action_dim = len(stats["q01"])
    action_dim = action_dim or 7
    device = model.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device) if attention_mask is not None else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            embeds, mask, positions = pack_left(model, input_ids, attention_mask, pixel_values.to(device))
            decoded = greedy_decode(model, embeds, mask, positions, action_dim, return_hidden=return_hidden)
            ids, hidden = decoded if return_hidden else (decoded, None)
    finally:
        model.train(was_training)

    tokenizer = ActionTokenizer(model.action_vocab_size, bins=model.config.n_action_bins)
    normalized = tokenizer.decode_token_ids_to_actions(ids.cpu().numpy())
    actions = unnormalize_actions(normalized, stats) if unnormalize else normalized
    return (actions, hidden) if return_hidden else actions
