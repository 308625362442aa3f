"""The notebooks' GPU-only cells (tagged nbval-skip, so nbval never runs them) run as written on the CPU, with the
CUDA device swapped for the CPU and tiny sizes: notebook 06 §6 trains the cifar10 preset briefly and samples its raw
weights, notebook 07 §7 decodes latents from that run as DDIMLAB_CIFAR10_CKPT. On a lent H200 the same two cells ran
unchanged but for the data (the digits stand-in; no download there)."""
import json
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddimlab import checkpoint, samplers, schedule, train  # noqa: E402
from ddimlab.plotting import show_images  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TINY = ('dataset="digits_rgb", batch_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), num_groups=8, '
        'n_samples=4, sample_steps=5')         # the end-of-run grid too: 64 images of 50 steps took 9 of the 23 s


def skipped_cells(name: str) -> list[str]:
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    return ["".join(c["source"]) for c in cells if "nbval-skip" in c.get("metadata", {}).get("tags", [])]


def on_cpu(src: str) -> str:
    return src.replace("torch.cuda.is_available()", "True").replace('"cuda"', '"cpu"').replace(".cuda()", "")


@pytest.mark.slow
def test_gpu_cells_of_notebooks_06_and_07_run_on_cpu_with_tiny_sizes(tmp_path, monkeypatch):
    (cell6,) = skipped_cells("06_training_an_image_model.ipynb")
    (cell7,) = skipped_cells("07_ddim_properties.ipynb")
    old = 'dict(steps=2000, out="runs/cifar10_notebook", progress=False)'
    assert old in cell6 and "torch.cuda.is_available()" in cell6
    cell6 = on_cpu(cell6.replace(old, f'dict(steps=4, out="{tmp_path / "run"}", progress=False, {TINY})'))
    shown = []
    monkeypatch.setattr(plt, "show", lambda: (shown.append(len(plt.gcf().axes)), plt.close("all")))
    ns = dict(torch=torch, plt=plt, Path=Path, checkpoint=checkpoint, samplers=samplers, schedule=schedule,
              train=train, show_images=show_images)
    exec(cell6, ns)
    assert torch.isfinite(ns["x"]).all() and ns["x"].shape == (32, 3, 32, 32)
    monkeypatch.setenv("DDIMLAB_CIFAR10_CKPT", str(tmp_path / "run"))
    with pytest.warns(checkpoint.EarlyEMAWarning):
        exec(cell7, ns)
    assert ns["device"] == "cpu" and torch.isfinite(ns["x"]).all() and shown == [1, 5]
