"""Where the StaMo head reads the backbone (the action-token loss itself is `stamo_vla.vla.metrics`)."""

from __future__ import annotations

import torch

from stamo_vla.keys import IGNORE_INDEX


def readout_positions(
    labels: torch.Tensor, llm_length: int, prompt_length: torch.Tensor | None = None
) -> torch.Tensor:
    """LLM positions of the hidden state that predicts the first action token, one per row.

    The text index is ``prompt_length - 1`` (the last prompt token) when the batch carries prompt lengths, else
    the position before the first supervised label. Rows with neither raise a ValueError.

    Args:
        labels: (B, T) labels, -100 where not supervised.
        llm_length: L, the length of the LLM sequence (text plus inserted tokens).
        prompt_length: (B,) text tokens before the first action token, when the batch has it.
    """
    offset = llm_length - labels.shape[1]
    if prompt_length is not None:
        text_index = prompt_length.to(labels.device).long() - 1
    else:
        supervised = labels != IGNORE_INDEX
        if not bool(supervised.any(dim=1).all()):
            raise ValueError(
                "cannot locate the readout position: some rows have no supervised token and the batch has no "
                "'prompt_length'. Action-free samples must carry prompt_length (the batch transform adds it)."
            )
        text_index = supervised.float().argmax(dim=1) - 1
    return text_index + offset
