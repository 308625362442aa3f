"""The shared argument checks, and that the modules use them: one rule for an integer argument, one for a covariance."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ddimlab import ode, schedule, toy, train, unet
from ddimlab.checks import as_real, check_int, check_symmetric, int_range, is_complex


@pytest.mark.parametrize("v", [3, np.int64(3), np.uint8(3), torch.tensor(3)])
def test_integers_of_every_kind_are_taken_and_returned_as_python_ints(v):
    out = check_int("n", v)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("v", [True, 3.0, 0.9, "3", None, torch.tensor(3.0), np.float64(3), torch.tensor(True),
                               torch.tensor([[3]]), np.bool_(True)])
def test_what_only_looks_like_an_integer_is_refused(v):
    with pytest.raises(ValueError, match=r"^n must be a positive integer, got "):
        check_int("n", v)


def test_the_message_gives_the_range():
    assert [int_range(*a) for a in ((0,), (1,), (8,), (1, 6), (0, 2 ** 63 - 1), (0, 2 ** 32 - 1), (0, 255))] == [
        "a non-negative integer", "a positive integer", "an integer >= 8", "an integer in 1..6",
        "an integer in 0..2**63 - 1", "an integer in 0..2**32 - 1", "an integer in 0..255"]
    for v, low, high, said in ((0, 1, None, "a positive integer"), (9, 1, 8, "an integer in 1..8"),
                               (-1, 0, None, "a non-negative integer")):
        with pytest.raises(ValueError, match=re.escape(f"k must be {said} (why), got {v}")):
            check_int("k", v, low, high, " (why)")
    assert check_int("k", 8, 1, 8) == 8 and check_int("k", 0, 0) == 0


def test_numpy_integers_are_taken_wherever_an_integer_is():
    """Before the shared check some functions took np.int64 and others refused it ("must be a positive integer,
    got np.int64(10)"), e.g. for a step count read from a numpy array."""
    n = np.int64(10)
    assert len(schedule.beta_schedule("linear", n)) == 10
    assert len(ode.lambda_timesteps(n, schedule.make_alpha_bar("linear", 100))) == 10
    assert toy.default_mixture().sample(n).shape == (10, 2)
    assert toy.random_mixture(d=np.int64(3), K=np.int64(2)).K == 2


def test_integers_that_go_into_a_checkpoint_are_stored_as_python_ints(tmp_path):
    """A numpy integer in the network's or the run's config would be saved into the checkpoint, which
    weights-only loading then refuses: both configs keep Python ints."""
    net = unet.UNet(in_ch=np.int64(1), ch=np.int64(8), ch_mult=(1, 2), num_res_blocks=np.int64(1),
                    attn_resolutions=(), resolution=np.int64(8), num_groups=np.int64(4))
    c = train.make_config("digits", {"steps": np.int64(3), "seed": np.int64(5), "warmup": np.int64(0)})
    assert all(type(v) is int for v in (net.config["ch"], net.config["in_ch"], c.steps, c.seed, c.warmup))
    torch.save({"config": net.config}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"]["ch"] == 8


def test_a_covariance_must_be_symmetric_to_float32_rounding_whatever_its_dtype():
    A = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.float64):
        cov = (A @ torch.diag(torch.rand(6, generator=torch.Generator().manual_seed(1)) + 0.5) @ A.T).to(dtype)
        check_symmetric(cov, "cov")           # float32's rounding of A Λ Aᵀ is not asymmetry, in either dtype
        off = cov.clone()
        off[0, 1] += 1e-3 * float(cov.abs().max())                    # an asymmetry someone means
        with pytest.raises(ValueError, match="^cov must be symmetric$"):
            check_symmetric(off, "cov")
    with pytest.raises(ValueError, match="must be finite"):
        check_symmetric(np.full((2, 2), np.nan), "cov")
    check_symmetric(np.eye(3, dtype=np.int64), "cov")


def test_no_module_writes_the_integer_check_out_again():
    """One rule: the positive- or non-negative-integer message comes from checks.int_range only."""
    pattern = re.compile(r"must be (a positive|a non-negative) int")
    found = [f"{p.name}:{i}" for p in Path(unet.__file__).parent.glob("*.py") if p.name != "checks.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_real_numbers_of_every_kind_are_taken_and_nothing_else():
    for v in (0.5, 2, np.float32(0.5), np.int64(2), torch.tensor(0.5), torch.tensor(2)):
        assert type(as_real(v)) is float and as_real(v) == float(v)
    for v in (True, "0.5", None, float("nan"), float("inf"), torch.tensor([0.5]), torch.tensor(True), 1j):
        assert as_real(v) is None, v


def test_is_complex_sees_complex_numbers_in_every_container():
    """One test for complex input (schedule.alpha_bar, ode.t_of_sigma, nb.check_close): a tensor, an array, a list or
    a number of complex numbers, and not real or integer ones."""
    for v in (torch.zeros(2, dtype=torch.complex64), np.array([0.1 + 0.01j]), [0.1 + 0j], 1j):
        assert is_complex(v), v
    for v in (torch.zeros(2), np.arange(3), [0.1, 2], 1.5):
        assert not is_complex(v), v


def test_check_values_names_a_meta_tensor_and_passes_everything_else():
    """Round 47: one rule and one message for a tensor on the meta device (shapes, no values), where torch says "Cannot
    copy out of meta tensor; no data!" or "Tensor.item() cannot be called on meta tensors" from deep inside."""
    from ddimlab.checks import check_values

    with pytest.raises(ValueError, match=r"^x is on the meta device, which holds shapes but no values: it is drawn$"):
        check_values("x", torch.zeros(2, device="meta"), "it is drawn")
    for v in (torch.zeros(2), np.zeros(2), 0.5, [1.0], None):
        assert check_values("x", v, "it is drawn") is None
