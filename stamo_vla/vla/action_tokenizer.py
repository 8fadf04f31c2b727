"""`ActionTokenizer`: continuous actions <-> the last `n_bins` ids of the base vocabulary (upstream semantics).

256 uniform bin edges over [min_action, max_action]; `np.digitize` gives 1..256 and the token id is
`vocab_size - digitized`, so for Llama-2 (vocab 32000) action tokens are 31744..31999 and larger values get
smaller ids. Decoding maps `clip(vocab_size - id - 1, 0, n_bins - 2)` onto the 255 bin centres, so the two
highest ids decode to the same centre.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ActionTokenizer:
    """Discretize actions into vocabulary ids and back.

    Args:
        tokenizer: an object with a `vocab_size` attribute (the BASE vocabulary size, without added
            tokens such as <PAD>; 32000 for Llama-2), or that size as an int. If it also has `decode`,
            `__call__` returns the decoded string like upstream.
        bins: number of bin edges (256 upstream).
        min_action: lower clip bound of normalized actions.
        max_action: upper clip bound of normalized actions.
    """

    def __init__(self, tokenizer: Any, bins: int = 256, min_action: float = -1.0, max_action: float = 1.0):
        self.tokenizer = None if isinstance(tokenizer, int) else tokenizer
        self.vocab_size = int(tokenizer if isinstance(tokenizer, int) else tokenizer.vocab_size)
        if bins < 2 or bins >= self.vocab_size:
            raise ValueError(f"ActionTokenizer: bins={bins} must be in [2, vocab_size={self.vocab_size}).")
        if not min_action < max_action:
            raise ValueError(
                f"ActionTokenizer: need min_action < max_action, got {min_action}, {max_action}."
            )
        self.n_bins = bins
        self.min_action = float(min_action)
        self.max_action = float(max_action)
        self.bins = np.linspace(min_action, max_action, bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def action_token_begin_idx(self) -> int:
        """Ids strictly greater than this are action tokens (31743 for Llama-2)."""
        return self.vocab_size - (self.n_bins + 1)

    def encode_to_ids(self, action: np.ndarray) -> np.ndarray:
        """Normalized actions (any shape) -> int64 token ids of the same shape."""
        action = np.clip(np.asarray(action, dtype=np.float64), self.min_action, self.max_action)
        return (self.vocab_size - np.digitize(action, self.bins)).astype(np.int64)

    def __call__(self, action: np.ndarray) -> str | list[str]:
        """Upstream API: the decoded string of the action tokens (needs a tokenizer with `decode`)."""
        if self.tokenizer is None or not hasattr(self.tokenizer, "decode"):
            raise TypeError("ActionTokenizer.__call__ needs a tokenizer with `decode`; use encode_to_ids().")
        ids = self.encode_to_ids(action)
        if ids.ndim == 1:
            return self.tokenizer.decode(ids.tolist())
        return self.tokenizer.batch_decode(ids.tolist())

    def decode_token_ids_to_actions(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids (any shape) -> bin-centre actions (float64, same shape); non-action ids are clipped."""
        digitized = self.vocab_size - np.asarray(token_ids, dtype=np.int64)
        digitized = np.clip(digitized - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[digitized]
