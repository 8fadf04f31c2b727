"""ActionTokenizer: upstream encode/decode table for the Llama-2 vocabulary (32000) and other sizes."""

from types import SimpleNamespace

import numpy as np
import pytest

from stamo_vla.vla.action_tokenizer import ActionTokenizer


@pytest.fixture
def llama_tokenizer():
    # only vocab_size is read; no real Llama tokenizer is needed
    return ActionTokenizer(SimpleNamespace(vocab_size=32000))


def test_encode_table(llama_tokenizer):
    ids = llama_tokenizer.encode_to_ids(np.array([1.0, 0.0, -1.0, 2.5, -7.0]))
    assert ids.tolist() == [31744, 31872, 31999, 31744, 31999]
    assert llama_tokenizer.action_token_begin_idx == 31743


def test_decode_table(llama_tokenizer):
    centers = llama_tokenizer.bin_centers
    decoded = llama_tokenizer.decode_token_ids_to_actions(np.array([31744, 31745, 31999, 31872]))
    assert decoded[0] == decoded[1] == centers[254]
    assert decoded[2] == centers[0]
    assert decoded[3] == centers[127]
    assert centers.shape == (255,)
    # non-action ids are clipped onto the end bins, like upstream
    assert llama_tokenizer.decode_token_ids_to_actions(np.array([5, 32010])).tolist() == [
        centers[254],
        centers[0],
    ]


def test_round_trip_within_one_bin(llama_tokenizer):
    actions = np.linspace(-1, 1, 1001)
    decoded = llama_tokenizer.decode_token_ids_to_actions(llama_tokenizer.encode_to_ids(actions))
    assert np.abs(decoded - actions).max() <= 2.0 / 255 + 1e-9


def test_other_vocab_sizes_use_last_bins():
    tok = ActionTokenizer(512)
    ids = tok.encode_to_ids(np.array([1.0, -1.0]))
    assert ids.tolist() == [256, 511]
    assert tok.action_token_begin_idx == 255


def test_call_returns_decoded_string():
    class Fake:
        vocab_size = 32000

        def decode(self, ids):
            return ",".join(map(str, ids))

    assert ActionTokenizer(Fake())(np.array([1.0, 0.0])) == "31744,31872"
    with pytest.raises(TypeError, match="encode_to_ids"):
        ActionTokenizer(32000)(np.array([0.0]))


def test_bad_bins():
    with pytest.raises(ValueError, match="bins=1"):
        ActionTokenizer(32000, bins=1)
