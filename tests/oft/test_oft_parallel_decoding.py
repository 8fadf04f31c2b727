"""Parallel decoding on the stock Llama: the 4-D mask's semantics, one pass, and agreement with a reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oft_helpers import CHUNK, make_oft, oft_batch

from stamo_vla import keys as K
from stamo_vla.adapter.modeling_adapter import base_model_of
from stamo_vla.vla.oft_modules import parallel_attention_mask

INSTRUCTIONS = ["pick up the black bowl", "open the top drawer of the cabinet and put the bowl inside"]


@pytest.fixture(scope="module")
def oft():
    model, processor = make_oft(num_images=1)  # one image keeps the per-query reference affordable
    return model, processor, oft_batch(model, processor, INSTRUCTIONS)


def _inputs(model, batch):
    base = base_model_of(model.vla)
    return base, model.oft.build_inputs(
        base,
        batch[K.INPUT_IDS],
        batch[K.ATTENTION_MASK],
        batch[K.PIXEL_VALUES],
        batch[K.PROMPT_LENGTH],
        batch[K.PROPRIO],
    )


def test_mask_semantics_on_a_small_layout():
    # row: 3 prompt tokens, 3 action positions, EOS, 1 pad
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    block = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    allowed = parallel_attention_mask(valid, block, torch.float32)[0, 0] == 0
    for i in range(7):
        for j in range(8):
            expect = bool(valid[0, j]) and (j <= i or (3 <= i <= 5 and 3 <= j <= 5))
            assert bool(allowed[i, j]) == expect, (i, j)
    assert allowed[3:6, 6].sum() == 0  # no action position sees EOS
    assert torch.equal(allowed[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())  # prompt stays causal
    blocked = parallel_attention_mask(valid, block, torch.bfloat16)[0, 0, 0, 1]
    assert blocked == torch.finfo(torch.bfloat16).min


def test_action_embeddings_are_zero_and_blocks_sit_after_the_prompt(oft):
    model, _, batch = oft
    _, inputs = _inputs(model, batch)
    rows = torch.arange(2)[:, None]
    assert torch.count_nonzero(inputs.inputs_embeds[rows, inputs.action_positions]) == 0
    assert torch.equal(inputs.readout_positions, inputs.action_positions[:, 0] - 1)
    mask = inputs.attention_mask[:, 0] == 0
    for r in range(2):
        first, last = inputs.action_positions[r, 0].item(), inputs.action_positions[r, -1].item()
        eos = last + 1
        assert not mask[r, first : last + 1, eos].any()  # actions never see EOS ...
        assert mask[r, first : last + 1, : last + 1].all()  # ... but see the whole prompt and block
        prompt = mask[r, :first, :first]
        assert torch.equal(prompt, torch.ones_like(prompt).tril())


def _reference_hidden(decoder, embeds, positions, allowed):
    """Llama forward for one row, computing every query's attention over its explicitly listed key set."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    x = embeds[None].float()
    cos, sin = decoder.rotary_emb(x, positions[None])
    for layer in decoder.layers:
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        hd = attn.head_dim
        q = attn.q_proj(h).view(1, -1, attn.config.num_attention_heads, hd).transpose(1, 2)
        k = attn.k_proj(h).view(1, -1, attn.config.num_key_value_heads, hd).transpose(1, 2)
        v = attn.v_proj(h).view(1, -1, attn.config.num_key_value_heads, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out = torch.zeros_like(q)
        for i, keys in enumerate(allowed):
            scores = (q[:, :, i : i + 1] @ k[:, :, keys].transpose(-1, -2)) * hd**-0.5
            out[:, :, i] = (scores.softmax(-1) @ v[:, :, keys])[:, :, 0]
        x = x + attn.o_proj(out.transpose(1, 2).reshape(1, x.shape[1], -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return decoder.norm(x)[0]


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_pass_matches_a_per_query_reference(oft, attn):
    model, _, batch = oft
    base, inputs = _inputs(model, batch)
    decoder = base.get_decoder()
    base.config.text_config._attn_implementation = attn
    try:
        with torch.no_grad():
            hidden = decoder(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids,
                use_cache=False,
            ).last_hidden_state
    finally:
        base.config.text_config._attn_implementation = "sdpa"
    r = 0  # the short row: it is right padded
    length = (
        int(batch[K.ATTENTION_MASK][r].sum()) + inputs.inputs_embeds.shape[1] - batch[K.INPUT_IDS].shape[1]
    )
    block = inputs.action_positions[r].tolist()
    # the semantics, written out: an action position sees the prompt and the whole block, everything else is causal
    allowed = [list(range(block[-1] + 1)) if i in block else list(range(i + 1)) for i in range(length)]
    with torch.no_grad():
        ref = _reference_hidden(
            decoder, inputs.inputs_embeds[r, :length], inputs.position_ids[r, :length], allowed
        )
    torch.testing.assert_close(hidden[r, :length], ref, atol=2e-5, rtol=1e-4)


def test_predict_action_uses_one_llm_pass_and_equals_the_training_forward(oft):
    model, processor, batch = oft
    base = base_model_of(model.vla)
    calls = []
    handle = base.get_decoder().layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        prompts = [processor.prompt_ids(t) for t in INSTRUCTIONS]
        ids = torch.full((2, max(map(len, prompts))), processor.tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, : len(p)], mask[i, : len(p)] = torch.tensor(p), 1
        pred = model.predict_action(
            batch[K.PIXEL_VALUES], ids, mask, proprio=batch[K.PROPRIO], unnormalize=False
        )
    finally:
        handle.remove()
    assert len(calls) == 1
    assert pred.shape == (2, CHUNK, 7)
    with torch.no_grad():
        train = model._run(batch).actions.numpy()
    np.testing.assert_allclose(pred, train, atol=1e-5)
    # each row alone gives the same chunk as in the padded batch
    with torch.no_grad():
        alone = model.predict_action(
            batch[K.PIXEL_VALUES][:1],
            ids[:1, : len(prompts[0])],
            None,
            proprio=batch[K.PROPRIO][:1],
            unnormalize=False,
        )
    np.testing.assert_allclose(alone, pred[:1], atol=1e-5)


@pytest.mark.slow
def test_eos_is_invisible_to_actions_but_prompt_tokens_are_not(oft):
    model, _, batch = oft
    base = base_model_of(model.vla)
    embed = base.get_input_embeddings()

    def actions_with(edit):
        handle = embed.register_forward_hook(lambda mod, args, out: edit(out.clone()))
        try:
            with torch.no_grad():
                return model._run(batch).actions
        finally:
            handle.remove()

    plain = actions_with(lambda out: out)
    eos = batch[K.PROMPT_LENGTH] + CHUNK * 7

    def noisy_eos(out):
        out[torch.arange(2), eos] += 3.0 * torch.randn(2, out.shape[-1])
        return out

    def noisy_prompt(out):
        out[torch.arange(2), batch[K.PROMPT_LENGTH] - 2] += 3.0 * torch.randn(2, out.shape[-1])
        return out

    torch.testing.assert_close(actions_with(noisy_eos), plain, atol=1e-6, rtol=0)
    assert not torch.allclose(actions_with(noisy_prompt), plain, atol=1e-4)


def test_prompt_positions_equal_a_plain_causal_pass(oft):
    model, _, batch = oft
    base, inputs = _inputs(model, batch)
    r = 1  # the long row (no padding)
    first = inputs.action_positions[r, 0].item()
    with torch.no_grad():
        ours = base.get_decoder()(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
        ).last_hidden_state[r, :first]
        causal = base.get_decoder()(inputs_embeds=inputs.inputs_embeds[r : r + 1, :first], use_cache=False)
    torch.testing.assert_close(ours, causal.last_hidden_state[0], atol=2e-5, rtol=1e-4)
