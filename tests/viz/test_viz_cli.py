"""`stamo-vla viz`: sheets of decoded states, with the right layout; bad inputs are clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from stamo_vla.cli import main as cli_main
from stamo_vla.stamo import StaMoAutoencoder
from stamo_vla.viz.cli import render


@pytest.fixture(scope="module")
def stamo(tiny_stamo_dir):
    return tiny_stamo_dir


@pytest.fixture()
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize(
    ("mode", "n_images", "shape"),
    [
        ("reconstruct", 3, (2 * 66 + 2, 3 * 66 + 2)),
        ("interpolate", 2, (66 + 2, 4 * 66 + 2)),
        ("transfer", 3, (66 + 2, 4 * 66 + 2)),
    ],
)
def test_sheets_have_the_documented_layout(tmp_path, stamo, image_files, mode, n_images, shape):
    out = tmp_path / f"{mode}.png"
    args = [
        "viz",
        "--mode",
        mode,
        "--stamo_path",
        str(stamo),
        "--images",
        "[" + ",".join(map(str, image_files[:n_images])) + "]",
        "--output_path",
        str(out),
        "--steps",
        "4",
        "--sample_steps",
        "2",
    ]
    assert cli_main(args) == 0
    assert np.asarray(Image.open(out)).shape[:2] == shape


def test_interpolation_endpoints_decode_the_endpoint_states(stamo):
    model = StaMoAutoencoder.from_pretrained(stamo).eval()
    images = torch.rand(2, 3, 64, 64)
    strip = render("interpolate", model, images, steps=3, sample_steps=2)[0]
    with torch.no_grad():
        ends = model.decode(model.encode(images), steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(strip[0], ends[0], atol=1e-5)


def test_bad_inputs(tmp_path, stamo, image_files, capsys):
    model = StaMoAutoencoder.from_pretrained(stamo).eval()
    with pytest.raises(ValueError, match="viz transfer needs 3 images; got 2"):
        render("transfer", model, torch.rand(2, 3, 64, 64))
    argv = ["viz", "--mode", "reconstruct", "--stamo_path", str(stamo)]
    argv += ["--images", f"[{tmp_path / 'no.png'}]", "--output_path", str(tmp_path / "x.png")]
    assert cli_main(argv) == 2  # a FileNotFoundError, printed without a traceback
    assert "does not exist" in capsys.readouterr().err
