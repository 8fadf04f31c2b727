"""BPE merges learned on task prompts: shorter prompts, same text, same action tokens, Llama-like layout."""

from __future__ import annotations

from stamo_vla.vla.processing_openvla import build_prompt
from stamo_vla.vla.tokenization import EMPTY_TOKEN_ID, build_tiny_tokenizer

TASKS = [
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "pick up the black bowl next to the ramekin and place it on the plate",
    "pick up the black bowl on the stove and place it on the plate",
]
ACTIONS = "".join(chr(0x4E00 + i) for i in (0, 17, 255))  # three action characters (ids 768, 785, 1023)


def test_merges_shorten_prompts_and_keep_the_text_and_the_layout():
    chars = build_tiny_tokenizer(1024)
    merged = build_tiny_tokenizer(1024, corpus=[build_prompt(t) for t in TASKS])
    unseen = "pick up the black bowl from table center and place it on the plate"
    for text in [build_prompt(t) for t in TASKS] + [build_prompt(unseen)]:
        ids = merged(text).input_ids
        assert len(ids) < len(chars(text).input_ids) / 2
        assert merged.decode(ids, skip_special_tokens=True) == text
    assert len(merged(build_prompt(TASKS[0])).input_ids) < 30
    # the layout every OpenVLA component relies on is unchanged
    assert (
        merged.vocab_size == merged.pad_token_id == 1024
        and merged.bos_token_id == 1
        and merged.eos_token_id == 2
    )
    assert merged.convert_ids_to_tokens(EMPTY_TOKEN_ID) == "▁"
    assert merged.convert_tokens_to_ids(list(ACTIONS)) == [768, 785, 1023]


def test_a_prompt_tokenizes_the_same_with_action_characters_after_it():
    merged = build_tiny_tokenizer(1024, corpus=[build_prompt(t) for t in TASKS])
    prompt = merged(build_prompt(TASKS[1])).input_ids
    full = merged(build_prompt(TASKS[1]) + ACTIONS).input_ids
    assert full[: len(prompt)] == prompt and full[len(prompt) :] == [768, 785, 1023]


def test_without_a_corpus_the_tokenizer_is_character_level_as_before():
    tok = build_tiny_tokenizer(512)
    text = "pick up"
    assert tok.convert_ids_to_tokens(tok(text).input_ids)[1:] == ["▁", "p", "i", "c", "k", "▁", "u", "p"]
