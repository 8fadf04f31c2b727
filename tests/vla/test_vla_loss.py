"""forward/compute_loss: sequence layout, labels on patches, loss and upstream finetune metrics."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stamo_vla.keys import ACTION, IMAGE, INSTRUCTION, LABELS
from stamo_vla.vla import ActionTokenizer, OpenVLABatchTransform, build_tiny


@pytest.fixture(scope="module")
def setup():
    model, processor = build_tiny(seed=0)
    transform = OpenVLABatchTransform(processor, ActionTokenizer(processor.tokenizer))
    rng = np.random.default_rng(0)
    samples = [
        {
            IMAGE: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            INSTRUCTION: text,
            ACTION: rng.uniform(-1, 1, (1, 7)).astype(np.float32),
        }
        for text in ("pick up the bowl", "open the drawer and put the bowl inside")
    ]
    return model, transform.collate_samples(samples)


def test_forward_layout_and_loss(setup):
    model, batch = setup
    out = model(
        **{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")},
        output_hidden_states=True,
    )
    n, (b, t) = model.num_vision_tokens, batch["input_ids"].shape
    assert n == 256 and out.logits.shape == (b, n + t, 576)
    assert out.projector_features.shape == (b, n, 32)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (b, n + t, 32)
    assert (out.labels[:, 1 : n + 1] == -100).all() and torch.equal(
        out.labels[:, n + 1 :], batch[LABELS][:, 1:]
    )
    # HF-style causal loss over the multimodal sequence
    ref = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, 576), out.labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, ref)


def test_compute_loss_metrics_match_upstream_formulas(setup):
    model, batch = setup
    loss, metrics, out = model.compute_loss(batch)
    logits, labels = out.logits[:, model.num_vision_tokens : -1], batch[LABELS][:, 1:]
    preds, mask = logits.argmax(-1), labels > 255
    assert int(mask.sum()) == 14 == metrics["num_action_tokens"]
    assert metrics["action_accuracy"] == pytest.approx(float(((preds == labels) & mask).sum() / mask.sum()))
    tok = ActionTokenizer(512)
    l1 = np.abs(
        tok.decode_token_ids_to_actions(preds[mask].numpy())
        - tok.decode_token_ids_to_actions(labels[mask].numpy())
    )
    assert metrics["action_l1"] == pytest.approx(float(l1.mean()))
    supervised = labels != -100  # the action tokens and the EOS after them
    assert metrics["loss_action"] == pytest.approx(
        float(F.cross_entropy(logits[supervised], labels[supervised]).detach()), rel=1e-5
    )
    assert metrics["loss"] == pytest.approx(float(loss.detach()))
    loss.backward()
    assert model.projector.fc1.weight.grad is not None
    assert model.vision_backbone.featurizer.blocks[0].ls1.scale_factor.grad is not None
    model.zero_grad()


def test_no_supervised_tokens_gives_zero_loss(setup):
    model, batch = setup
    batch = dict(batch, labels=torch.full_like(batch[LABELS], -100))
    loss, metrics, _ = model.compute_loss(batch)
    assert float(loss.detach()) == 0.0 and metrics["num_action_tokens"] == 0
    assert loss.requires_grad  # still a graph, so backward() in a training step does not fail
