"""bitsandbytes 4-bit / 8-bit loading of the tiny model on CPU (placement via device_map, never `.to()`)."""

import pytest
import torch

from stamo_vla.vla import OpenVLAForActionPrediction, build_prompt, build_tiny

pytest.importorskip("bitsandbytes")


@pytest.mark.slow
def test_4bit_forward_and_predict_on_cpu(tmp_path):
    import bitsandbytes as bnb

    model, processor = build_tiny(tmp_path / "ck", seed=0)
    quantized = OpenVLAForActionPrediction.from_pretrained(tmp_path / "ck", load_in_4bit=True)
    assert isinstance(quantized.language_model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert isinstance(quantized.vision_backbone.featurizer.blocks[0].attn.qkv, bnb.nn.Linear4bit)
    inputs = processor(
        [build_prompt("pick up the bowl"), build_prompt("open it")],
        [torch.zeros(224, 224, 3, dtype=torch.uint8).numpy()] * 2,
    )
    with torch.no_grad():
        ref = model(**inputs).logits
        out = quantized(**inputs).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()
    # FP4 weights on 32-wide layers are coarse, but the outputs still track the fp32 model (unrelated: ~0)
    assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.6
    actions = quantized.predict_action(**inputs)
    assert actions.shape == (2, 7)
