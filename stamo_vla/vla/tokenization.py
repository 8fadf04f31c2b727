"""A small Llama-like tokenizer built locally with the `tokenizers` library (no downloads), for tiny models.

Layout mirrors Llama-2's where it matters to OpenVLA:
- ids 0/1/2 are <unk>/<s>/</s> (BOS=1, EOS=2);
- id 3 is "▁", the word-boundary piece that plays the role of Llama's 29871 between "Out:" and the
  action characters;
- the LAST `n_action_bins` ids of the base vocab are single rare characters (action tokens), like Llama's
  31744..31999;
- "<PAD>" is appended after the base vocab (like <PAD>=32000).
Every printable ASCII character is its own token. Without a corpus there are no merges; with one, BPE merges
learned on it (``tokenizers``' own trainer, within words) take the free ids between the characters and the action
block, so frequent words become one token as in Llama. Action characters never occur in a corpus, so no merge
touches them: a prompt tokenizes the same whether or not action characters follow it (the property the upstream
decode/re-tokenize route relies on).
"""

from __future__ import annotations

import os
import string
from typing import Any

UNK, BOS, EOS, EMPTY = "<unk>", "<s>", "</s>", "▁"
PAD = "<PAD>"
EMPTY_TOKEN_ID = 3
# Action characters come from the CJK block: never produced by ASCII prompts.
_ACTION_CHAR_START = 0x4E00
# Filler characters between ASCII and the action block (Latin-1 supplement / Latin extended).
_FILLER_CHAR_START = 0x00A1


def _text_pieces() -> list[str]:
    return [UNK, BOS, EOS, EMPTY, "\n"] + [c for c in string.printable if c.isprintable() and c != " "]


def _base_vocab(vocab_size: int, n_action_bins: int) -> dict[str, int]:
    pieces = _text_pieces()
    n_fill = vocab_size - n_action_bins - len(pieces)
    if n_fill < 0:
        raise ValueError(
            f"build_tiny_tokenizer: vocab_size={vocab_size} is too small for {len(pieces)} text pieces "
            f"plus {n_action_bins} action tokens; use at least {len(pieces) + n_action_bins}."
        )
    pieces += [chr(_FILLER_CHAR_START + i) for i in range(n_fill)]
    pieces += [chr(_ACTION_CHAR_START + i) for i in range(n_action_bins)]
    return {p: i for i, p in enumerate(pieces)}


def _learn_merges(corpus: list[str], base: dict[str, int], budget: int, normalizer, pre_tokenizer) -> list:
    """BPE merges learned on `corpus` by the tokenizers trainer, at most `budget` new tokens."""
    import json

    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    alphabet = [p for p in base if len(p) == 1]
    scratch = Tokenizer(BPE(unk_token=UNK))
    scratch.normalizer, scratch.pre_tokenizer = normalizer, pre_tokenizer
    trainer = BpeTrainer(
        vocab_size=len(alphabet) + budget,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    scratch.train_from_iterator(corpus, trainer)
    merges = json.loads(scratch.to_str())["model"]["merges"]
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    # keep merges whose pieces are all known characters or earlier merge results
    known, kept = set(base), []
    for a, b in pairs:
        if a in known and b in known and a + b not in known and len(kept) < budget:
            kept.append((a, b))
            known.add(a + b)
    return kept


def build_tiny_tokenizer(
    vocab_size: int = 512,
    n_action_bins: int = 256,
    model_max_length: int = 2048,
    corpus: list[str] | None = None,
):
    """Build the tiny tokenizer as a transformers fast tokenizer.

    Args:
        vocab_size: base vocabulary size (without <PAD>); action tokens are its last `n_action_bins` ids.
        n_action_bins: number of action tokens.
        model_max_length: stored as the tokenizer's maximum length.
        corpus: texts to learn BPE merges on (e.g. the prompts of the training instructions); the merges take
            the free ids between the characters and the action tokens. None: characters only.

    Returns:
        A `PreTrainedTokenizerFast` with BOS=1, EOS=2, <PAD>=vocab_size, right padding, that saves to and
        loads from a directory with `AutoTokenizer`.
    """
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    vocab = _base_vocab(vocab_size, n_action_bins)
    # SentencePiece-style: a leading "▁" and every space becomes "▁" (Llama's normalizer in tokenizer.json)
    normalizer = normalizers.Sequence([normalizers.Prepend(EMPTY), normalizers.Replace(" ", EMPTY)])
    merges, pre_tokenizer = _merges_into_vocab(vocab, corpus, vocab_size, n_action_bins, normalizer)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True))
    tok.normalizer = normalizer
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Sequence(
        [decoders.Replace(EMPTY, " "), decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return _fast_tokenizer(tok, vocab_size, model_max_length)


def _merges_into_vocab(
    vocab: dict[str, int], corpus: list[str] | None, vocab_size: int, n_action_bins: int, normalizer: Any
) -> tuple[list, Any]:
    """(merges, pre-tokenizer) learned on `corpus`, the merged pieces given the filler ids of `vocab` (in place).

    Args:
        vocab: the base vocabulary (`_base_vocab`); its fillers are renamed to the merged pieces.
        corpus: texts to learn merges on; None or empty: no merges, no pre-tokenizer.
        vocab_size: base vocabulary size (without <PAD>).
        n_action_bins: number of action tokens (the last ids, never merged).
        normalizer: the tokenizer's normalizer (merges are learned on normalized text).
    """
    from tokenizers import Regex, pre_tokenizers

    if not corpus:
        return [], None
    # merges stay inside words: split before every "▁" (a no-op for character-level tokens)
    pre_tokenizer = pre_tokenizers.Split(Regex(EMPTY), behavior="merged_with_next")
    n_text = len(_text_pieces())
    fillers = [p for p, i in vocab.items() if n_text <= i < vocab_size - n_action_bins]
    merges = _learn_merges(
        list(corpus),
        {p: i for p, i in vocab.items() if p not in fillers},
        len(fillers),
        normalizer,
        pre_tokenizer,
    )
    for (a, b), filler in zip(merges, fillers):  # merged pieces take the filler ids, in merge order
        vocab[a + b] = vocab.pop(filler)
    return merges, pre_tokenizer


def _fast_tokenizer(tok: Any, vocab_size: int, model_max_length: int):
    """`tok` as a transformers fast tokenizer with <PAD> at id `vocab_size`, right padding."""
    from transformers import PreTrainedTokenizerFast

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
