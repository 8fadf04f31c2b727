"""A small Llama-like tokenizer built locally with the `tokenizers` library (no downloads), for tiny models.

Layout mirrors Llama-2's where it matters to OpenVLA:
- ids 0/1/2 are <unk>/<s>/</s> (BOS=1, EOS=2);
- id 3 is "▁", the word-boundary piece that plays the role of Llama's 29871 between "Out:" and the
  action characters;
- the LAST `n_action_bins` ids of the base vocab are single rare characters (action tokens), like Llama's
  31744..31999;
- "<PAD>" is appended after the base vocab (like <PAD>=32000).
Every printable ASCII character is its own token and there are no merges, so a prompt tokenizes the same
whether or not action characters follow it (the property the upstream decode/re-tokenize route relies on).
"""

from __future__ import annotations

import os
import string

UNK, BOS, EOS, EMPTY = "<unk>", "<s>", "</s>", "▁"
PAD = "<PAD>"
EMPTY_TOKEN_ID = 3
# Action characters come from the CJK block: never produced by ASCII prompts.
_ACTION_CHAR_START = 0x4E00
# Filler characters between ASCII and the action block (Latin-1 supplement / Latin extended).
_FILLER_CHAR_START = 0x00A1


def _base_vocab(vocab_size: int, n_action_bins: int) -> dict[str, int]:
    pieces = [UNK, BOS, EOS, EMPTY, "\n"] + [c for c in string.printable if c.isprintable() and c != " "]
    n_fill = vocab_size - n_action_bins - len(pieces)
    if n_fill < 0:
        raise ValueError(
            f"build_tiny_tokenizer: vocab_size={vocab_size} is too small for {len(pieces)} text pieces "
            f"plus {n_action_bins} action tokens; use at least {len(pieces) + n_action_bins}."
        )
    pieces += [chr(_FILLER_CHAR_START + i) for i in range(n_fill)]
    pieces += [chr(_ACTION_CHAR_START + i) for i in range(n_action_bins)]
    return {p: i for i, p in enumerate(pieces)}


def build_tiny_tokenizer(vocab_size: int = 512, n_action_bins: int = 256, model_max_length: int = 2048):
    """Build the tiny tokenizer as a transformers fast tokenizer.

    Args:
        vocab_size: base vocabulary size (without <PAD>); action tokens are its last `n_action_bins` ids.
        n_action_bins: number of action tokens.
        model_max_length: stored as the tokenizer's maximum length.

    Returns:
        A `PreTrainedTokenizerFast` with BOS=1, EOS=2, <PAD>=vocab_size, right padding, that saves to and
        loads from a directory with `AutoTokenizer`.
    """
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = _base_vocab(vocab_size, n_action_bins)
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=True))
    # SentencePiece-style: a leading "▁" and every space becomes "▁" (Llama's normalizer in tokenizer.json)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(EMPTY), normalizers.Replace(" ", EMPTY)])
    tok.decoder = decoders.Sequence(
        [decoders.Replace(EMPTY, " "), decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({"pad_token": PAD})
    if fast.pad_token_id != vocab_size or fast.vocab_size != vocab_size:
        raise RuntimeError(
            f"tiny tokenizer layout broken: pad id {fast.pad_token_id}, vocab_size {fast.vocab_size}, "
            f"expected {vocab_size} for both"
        )
    return fast


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer saved in a checkpoint directory (Llama SentencePiece or the tiny one).

    Raises:
        FileNotFoundError: neither ``tokenizer.json`` nor ``tokenizer.model`` is in `path`.
        ValueError: the tokenizer file is there but cannot be read (truncated or invalid).
    """
    from pathlib import Path

    from transformers import AutoTokenizer

    directory = Path(path)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"tokenizer: {directory} has neither {' nor '.join(TOKENIZER_FILES)}. Copy the tokenizer files "
            "(tokenizer.json, tokenizer_config.json, special_tokens_map.json) from the checkpoint it came from."
        )
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as err:  # tokenizers / transformers raise many types for a damaged file
        raise ValueError(
            f"tokenizer: cannot load the tokenizer in {directory} ({type(err).__name__}: {err}); its "
            "tokenizer.json / tokenizer_config.json is truncated or invalid. Copy them again from the "
            "checkpoint it came from."
        ) from err
