"""OpenVLA-OFT building blocks on stock transformers: the bidirectional mask, L1 head, proprio projector, FiLM.

Upstream OFT needs a pinned transformers fork whose SDPA path turns causal masking off: every non-padding token
attends to every non-padding token (prompt, image, proprio and action positions alike); only padding is masked.
Stock Llama in transformers 5.x accepts a prepared 4-D mask and uses it as-is (``masking_utils`` returns any 4-D
tensor unchanged): an *additive float* mask (0 = attend, dtype minimum = blocked) gives that attention with both
the "sdpa" and the "eager" kernels (eager adds the mask to the scores, so a bool mask would be wrong there).
"""

from __future__ import annotations

import types

import torch
from torch import nn


def bidirectional_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """4-D additive mask of the released OFT architecture: every query sees every real (non-padding) key.

    Args:
        attention_mask: (B, S) bool, True on real tokens (padding anywhere).
        dtype: dtype of the attention scores (the model's compute dtype).

    Returns:
        (B, 1, S, S) float: 0 where key j is a real token, ``finfo(dtype).min`` where it is padding. Padding
        queries see the same keys as real ones (their outputs are never read), so no softmax row is empty.
    """
    valid = attention_mask.bool()
    s = valid.shape[1]
    mask = torch.zeros(valid.shape[0], 1, s, s, dtype=dtype, device=valid.device)
    return mask.masked_fill(~valid[:, None, None, :], torch.finfo(dtype).min)


class MLPResNetBlock(nn.Module):
    """Pre-norm residual block: ``x + ReLU(Linear(LayerNorm(x)))`` (upstream OFT)."""

    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    """LayerNorm -> Linear -> ReLU -> `num_blocks` residual blocks -> LayerNorm -> Linear (upstream OFT)."""

    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList([MLPResNetBlock(hidden_dim) for _ in range(num_blocks)])
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """Hidden states at the K x A action positions -> (B, K, A) normalized actions.

    Args:
        hidden_size: LLM hidden size D.
        action_dim: A (7 for LIBERO).
        width: MLP-ResNet width (upstream: D).
    """

    def __init__(self, hidden_size: int, action_dim: int = 7, width: int | None = None):
        super().__init__()
        self.action_dim = action_dim
        self.model = MLPResNet(2, hidden_size * action_dim, width or hidden_size, action_dim)

    def forward(self, action_hidden: torch.Tensor) -> torch.Tensor:
        """action_hidden: (B, K * A, D) -> (B, K, A)."""
        b, n, d = action_hidden.shape
        if n % self.action_dim:
            raise ValueError(f"got {n} action positions, not a multiple of action_dim={self.action_dim}")
        return self.model(action_hidden.reshape(b, n // self.action_dim, self.action_dim * d))


class ProprioProjector(nn.Module):
    """Normalized proprio (B, P) -> one LLM token (B, D): Linear, GELU, Linear (upstream OFT)."""

    def __init__(self, proprio_dim: int, hidden_size: int):
        super().__init__()
        self.proprio_dim = proprio_dim
        self.fc1 = nn.Linear(proprio_dim, hidden_size)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio)))


class VisionFiLM(nn.Module):
    """FiLM of every ViT block on the average language embedding: ``x = x * (1 + gamma) + beta`` after attention.

    One (gamma, beta) projection pair (``llm_dim -> vision_dim``) per block of each featurizer, with torch's default
    ``nn.Linear`` init as upstream (so a fresh FiLM already modulates the pretrained features at step 0).

    `install` re-binds each block's ``forward`` (the block modules and their parameter names stay where they are,
    so LoRA targets and checkpoints are unaffected); without a condition set the blocks compute timm's forward.
    """

    def __init__(self, featurizers: list[nn.Module], llm_dim: int):
        super().__init__()
        self.scales = nn.ModuleList()
        self.shifts = nn.ModuleList()
        for vit in featurizers:
            for _ in vit.blocks:
                self.scales.append(nn.Linear(llm_dim, vit.embed_dim))
                self.shifts.append(nn.Linear(llm_dim, vit.embed_dim))
        self._condition: dict[str, torch.Tensor | None] = {"language": None}

    def install(self, featurizers: list[nn.Module]) -> None:
        """Make every block of `featurizers` apply this FiLM (idempotent for the same featurizers)."""
        blocks = [block for vit in featurizers for block in vit.blocks]
        if len(blocks) != len(self.scales):
            raise ValueError(
                f"FiLM has {len(self.scales)} projections but the backbone has {len(blocks)} blocks"
            )
        for i, block in enumerate(blocks):
            block.forward = types.MethodType(_filmed_block_forward(self, i), block)

    def set_condition(self, language: torch.Tensor | None) -> None:
        """language: (N, llm_dim) average language embedding per image row, or None to switch FiLM off."""
        self._condition["language"] = language


def _filmed_block_forward(film: VisionFiLM, index: int):
    def forward(block, x, attn_mask=None, is_causal=False):
        x = x + block.drop_path1(
            block.ls1(block.attn(block.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
        )
        language = film._condition["language"]
        if language is not None:
            gamma = film.scales[index](language.to(film.scales[index].weight.dtype)).to(x.dtype)
            beta = film.shifts[index](language.to(film.shifts[index].weight.dtype)).to(x.dtype)
            x = x * (1 + gamma[:, None]) + beta[:, None]
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    return forward
