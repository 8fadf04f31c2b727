"""Parallel decoding as the released OpenVLA-OFT runs it: bidirectional attention, readout, padding, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oft_helpers import CHUNK, make_oft, oft_batch

from stamo_vla import keys as K
from stamo_vla.adapter.modeling_adapter import base_model_of
from stamo_vla.vla.oft_modules import bidirectional_attention_mask

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


def test_mask_lets_every_token_see_every_real_token():
    # row: 3 prompt tokens, 3 action positions, EOS, 1 pad
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    allowed = bidirectional_attention_mask(valid, torch.float32)[0, 0] == 0
    assert (
        allowed[:, :7].all() and not allowed[:, 7].any()
    )  # prompt rows see later tokens, nobody sees padding
    blocked = bidirectional_attention_mask(valid, torch.bfloat16)[0, 0, 0, 7]
    assert blocked == torch.finfo(torch.bfloat16).min


def test_action_embeddings_are_zero_and_the_head_reads_one_position_before_each_slot(oft):
    model, _, batch = oft
    _, inputs = _inputs(model, batch)
    rows = torch.arange(2)[:, None]
    assert torch.count_nonzero(inputs.inputs_embeds[rows, inputs.action_positions]) == 0
    # upstream slices hidden[NUM_PATCHES + NUM_PROMPT_TOKENS : ... + K*A]: the "▁" position, then action slots 0..K*A-2
    n_patches = inputs.inputs_embeds.shape[1] - batch[K.INPUT_IDS].shape[1]
    prompt_tokens = batch[K.PROMPT_LENGTH] - 1  # upstream's NUM_PROMPT_TOKENS: prompt + "▁" without BOS
    upstream = n_patches + prompt_tokens[:, None] + torch.arange(CHUNK * 7)
    assert torch.equal(inputs.head_positions, upstream)
    assert torch.equal(inputs.head_positions[:, 1:], inputs.action_positions[:, :-1])
    assert torch.equal(inputs.readout_positions, inputs.head_positions[:, 0])
    ids = batch[K.INPUT_IDS]
    for r in range(2):  # the first read position holds "▁"
        assert ids[r, batch[K.PROMPT_LENGTH][r] - 1] == base_model_of(model.vla).config.empty_token_id


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
    # the semantics, written out: every real position sees every real position
    allowed = [list(range(length))] * length
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
    # each row alone (upstream's batch of one) gives the same chunk as in the padded batch
    for r in range(2):
        n = len(prompts[r])
        with torch.no_grad():
            alone = model.predict_action(
                batch[K.PIXEL_VALUES][r : r + 1],
                ids[r : r + 1, :n],
                None,
                proprio=batch[K.PROPRIO][r : r + 1],
                unnormalize=False,
            )
        np.testing.assert_allclose(alone, pred[r : r + 1], atol=1e-5)


def _actions_with(model, batch, edit):
    embed = base_model_of(model.vla).get_input_embeddings()
    handle = embed.register_forward_hook(lambda mod, args, out: edit(out.clone()))
    try:
        with torch.no_grad():
            return model._run(batch).actions
    finally:
        handle.remove()


def test_the_stop_token_after_the_actions_changes_them_and_padding_does_not(oft):
    model, processor, batch = oft
    plain = _actions_with(model, batch, lambda out: out)
    eos = batch[K.PROMPT_LENGTH] + CHUNK * 7  # text index of the stop token after the action slots

    def noisy_eos(out):
        out[torch.arange(2), eos] += 3.0 * torch.randn(2, out.shape[-1])
        return out

    # the fork's bidirectional attention: the token AFTER the action block reaches every action output
    # (under causal attention it could not)
    changed = _actions_with(model, batch, noisy_eos)
    assert not torch.allclose(changed, plain, atol=1e-4)
    # padding: more of it, and different pad embeddings, change nothing
    r = 0
    assert batch[K.ATTENTION_MASK][r].sum() < batch[K.ATTENTION_MASK].shape[1]  # row 0 is padded

    def noisy_padding(out):
        pad = ~batch[K.ATTENTION_MASK].bool()
        out[pad] += 5.0 * torch.randn(int(pad.sum()), out.shape[-1])
        return out

    torch.testing.assert_close(_actions_with(model, batch, noisy_padding), plain, atol=1e-5, rtol=1e-5)
    longer = dict(batch)
    extra = 5
    pad_id = processor.tokenizer.pad_token_id
    longer[K.INPUT_IDS] = torch.cat([batch[K.INPUT_IDS], torch.full((2, extra), pad_id)], dim=1)
    longer[K.ATTENTION_MASK] = torch.cat(
        [batch[K.ATTENTION_MASK], torch.zeros(2, extra, dtype=batch[K.ATTENTION_MASK].dtype)], dim=1
    )
    with torch.no_grad():
        torch.testing.assert_close(
            model.oft(
                base_model_of(model.vla),
                longer[K.INPUT_IDS],
                longer[K.ATTENTION_MASK],
                longer[K.PIXEL_VALUES],
                longer[K.PROMPT_LENGTH],
                longer[K.PROPRIO],
                film_over_padding=False,
            ).actions,
            plain,
            atol=1e-5,
            rtol=1e-5,
        )


def test_prompt_positions_see_the_action_block(oft):
    # unlike a causal prompt, the prompt's hidden states depend on the (zeroed) action block's positions
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
    assert not torch.allclose(ours, causal.last_hidden_state[0], atol=1e-4)
