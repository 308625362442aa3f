"""The notebook helpers: seeding reproduces draws, checks print one line or raise, fmt rounds stably."""
import pytest
import torch

from ddimlab.nb import check, check_close, fmt, seed_everything


def test_seed_everything_reproduces_every_generator():
    g = seed_everything(3, threads=1)
    first = (torch.randn(4, generator=g), torch.rand(2))
    g = seed_everything(3, threads=1)
    torch.testing.assert_close((torch.randn(4, generator=g), torch.rand(2)), first, rtol=0, atol=0)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("kernels", ["AVX512", "DEFAULT", "AVX2"])
def test_seed_everything_says_on_stderr_when_other_kernels_than_avx2_run(kernels, monkeypatch, capsys):
    """The committed outputs come from AVX2 kernels; elsewhere the reader learns why last digits may differ, on the
    stream nbval does not compare."""
    from ddimlab import devices
    monkeypatch.setattr(devices, "cpu_kernels", lambda: kernels)
    seed_everything(0, threads=torch.get_num_threads())
    out, err = capsys.readouterr()
    assert out == "" and (f"torch runs its {kernels} CPU kernels" in err) == (kernels != "AVX2"), err


def test_check_prints_one_line_or_raises(capsys):
    check(torch.ones(3, dtype=torch.bool), "all true")
    assert capsys.readouterr().out == "check: all true\n"
    with pytest.raises(AssertionError, match="check failed: one false"):
        check(torch.tensor([True, False]), "one false")


def test_check_close_uses_atol_plus_rtol():
    check_close([1.0, 2.0], [1.05, 2.0], "within atol", atol=0.06)
    check_close(100.0, 101.0, "within rtol", rtol=0.01)
    with pytest.raises(AssertionError, match=r"max abs err 0\.1"):
        check_close([1.0, 2.0], [1.1, 2.0], "outside", atol=0.05)


def test_fmt_rounds_scalars_tensors_and_sequences():
    assert fmt(0.123456) == "0.123"
    assert fmt(torch.tensor(1234.5, requires_grad=True), 2) == "1.2e+03"  # 0-d tensor: a scalar
    assert fmt(torch.tensor([0.5, 0.25]), 1) == "[0.5, 0.2]"
    assert fmt([1, 2.5]) == "[1, 2.5]"
    assert fmt(3.8e-15, 2, below=1e-12) == fmt(4.0e-15, 2, below=1e-12) == "below 1e-12"      # rounding-level misses
    assert fmt([4e-15, 2.5e-4], 2, below=1e-12) == "[below 1e-12, 0.00025]" and fmt(-1e-3, 2, below=1e-12) == "-0.001"
    assert fmt(3e-6, 1, below=1e-5) == "below 1e-5"


def test_importing_the_library_in_a_notebook_writes_nothing_to_stderr():
    """In a Jupyter kernel without ipywidgets, `from tqdm.auto import tqdm` warns "IProgress not found" with this
    machine's path; since `lab` imports `generate` (its progress bar) that warning went into the first cell of every
    notebook importing `lab` when re-executed, and nbval would compare a local path. Importing the modules that import
    tqdm.auto must leave no stderr output."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from ddimlab import generate, lab, tables")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    stderr = [o for o in nb.cells[0].outputs if o.get("name") == "stderr"]
    assert not stderr, stderr
