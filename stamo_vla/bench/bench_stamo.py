"""StaMo encoder throughput and decoder sampling time on random-init presets (tiny and mid).

The encoder (frozen DINOv2 + compressor) runs inside every VLA training step when targets are not
cached, so its images/s bounds the data rate; the decoder is used only for visualization, so its cost
per decoded image (Euler flow-matching steps of the DiT + one VAE decode) matters for sample sheets.

    stamo-vla bench --only '[stamo]'            # full run
    stamo-vla bench --only '[stamo]' --quick true    # a few seconds
"""

from __future__ import annotations

import time

import torch

from stamo_vla.stamo.configuration_stamo import mid_config, tiny_config
from stamo_vla.stamo.modeling_autoencoder import StaMoAutoencoder


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_preset(name: str, config, batch_size: int, steps: int, repeats: int, device: str) -> dict:
    """Encoder images/s and decoder seconds per image for one config.

    Args:
        name: the config's name in the report.
        config: the StaMo model config.
        batch_size: images per batch.
        steps: Euler steps of the decoder.
        repeats: timed rounds.
        device: the device the model runs on.
    """
    torch.manual_seed(0)
    model = StaMoAutoencoder(config).to(device).eval()
    images = torch.rand(batch_size, 3, config.image_size, config.image_size, device=device)
    with torch.inference_mode():
        states = model.encode(images)  # warm-up
        model.decode(states[:1], steps=1)
        encode_s = _time(lambda: model.encode(images), repeats)
        decode_s = _time(lambda: model.decode(states, steps=steps), max(1, repeats // 2))
    return {
        "preset": name,
        "encoder_params_m": sum(p.numel() for p in model.encoder.parameters()) / 1e6,
        "decoder_params_m": sum(p.numel() for p in model.decoder.parameters()) / 1e6,
        "image_size": config.image_size,
        "state": [config.num_state_tokens, config.state_dim],
        "batch_size": batch_size,
        "sample_steps": steps,
        "encoder_images_per_s": batch_size / encode_s,
        "decoder_s_per_image": decode_s / batch_size,
    }


def run(quick: bool = False, presets: tuple[str, ...] = ("tiny", "mid")) -> dict:
    """Benchmark the presets; prints a table and returns the numbers.

    Args:
        quick: fewer repeats, a smaller batch and fewer sampling steps (smoke runs and tests).
        presets: which of "tiny" and "mid" to run.

    Returns:
        {"device", "threads", "results": {preset: {encoder_images_per_s, decoder_s_per_image, ...}}}.
    """
    configs = {"tiny": tiny_config, "mid": mid_config}
    unknown = sorted(set(presets) - set(configs))
    if unknown:
        raise ValueError(f"presets: unknown {unknown}; allowed {sorted(configs)}.")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size, steps, repeats = (2, 2, 1) if quick else (8, 10, 4)
    results = {n: bench_preset(n, configs[n](), batch_size, steps, repeats, device) for n in presets}
    print(
        f"StaMo encode / decode, batch {batch_size}, {steps} sampling steps, device={device}, threads={torch.get_num_threads()}"
    )
    print(
        f"{'preset':<6} {'enc params(M)':>13} {'dec params(M)':>13} {'size':>5} {'encode img/s':>13} {'decode s/img':>13}"
    )
    for r in results.values():
        print(
            f"{r['preset']:<6} {r['encoder_params_m']:>13.2f} {r['decoder_params_m']:>13.2f} {r['image_size']:>5} "
            f"{r['encoder_images_per_s']:>13.1f} {r['decoder_s_per_image']:>13.4f}"
        )
    return {"device": device, "threads": torch.get_num_threads(), "results": results}
