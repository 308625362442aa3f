"""The DDIM paper's tables end to end on CPU: tiny UNet, small injected feature extractor, small n."""
import csv

import numpy as np
import pytest
import torch

from ddimlab import fid, generate, samplers, schedule, tables

SHAPE = (1, 8, 8)
ABAR = schedule.make_alpha_bar("linear", 1000)


@pytest.fixture
def net(tiny_unet):
    return tiny_unet


def test_reproduce_table1_end_to_end(net, tmp_path):
    f = fid.random_features(1, dim=8)
    ref = torch.randint(0, 256, (40, *SHAPE), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    kw = dict(S_list=(10, 20), eta_list=(0.0, "sigma_hat"), n_samples=6, shape=SHAPE, feature_fn=f,
              reference=ref, batch_size=4)
    rows = tables.reproduce_table1(net, tmp_path, **kw)
    assert [(r["eta"], r["S"]) for r in rows] == [("0", 10), ("0", 20), ("sigma_hat", 10), ("sigma_hat", 20)]
    assert [r["paper_fid"] for r in rows] == [None] * 4           # injected features: not the paper's measure
    assert all(np.isfinite(r["fid"]) and r["fid"] > 0 for r in rows)
    for r in rows:  # the reported distance is the one of the images on disk
        d = tmp_path / "samples" / f"eta{'_sigma_hat' if r['eta'] == 'sigma_hat' else r['eta']}_S{r['S']}"
        assert len(list(d.glob("*.png"))) == 6
        assert r["fid"] == pytest.approx(fid.compute_fid(d, ref, f), rel=1e-9)
    with open(tmp_path / "table1.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and table[0]["paper_fid"] == "" and float(table[0]["fid"]) == pytest.approx(rows[0]["fid"])
    md = (tmp_path / "table1.md").read_text()
    assert "| σ̂ | " in md and "(" not in md.split("\n\n")[1] and "S = 20" in md and "The paper's values are not shown" in md
    # rerun: nothing is resampled, same numbers
    again = tables.reproduce_table1(net, tmp_path, **kw)
    assert [r["fid"] for r in again] == [r["fid"] for r in rows]


def test_reproduce_table2_end_to_end(net, tmp_path):
    imgs = torch.randint(0, 256, (5, *SHAPE), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    rows = tables.reproduce_table2(net, tmp_path, images=imgs, S_list=(10, 20), batch_size=3)
    assert [r["S"] for r in rows] == [10, 20] and [r["paper_mse"] for r in rows] == [None, None]   # 1×8×8: not CIFAR-10
    assert all(r["n"] == 5 and 0 <= r["mse"] <= 1 for r in rows)
    assert "0.014" not in (tmp_path / "table2.md").read_text()
    with open(tmp_path / "table2.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    # independent check of the number: reconstruct directly, scale to [0, 1]
    x0 = imgs.float() / 127.5 - 1
    with torch.no_grad():
        rec = samplers.reconstruct(lambda x, t: net(x, t), x0, ABAR, schedule.timesteps(10, 1000, "uniform"))
    assert rows[0]["mse"] == pytest.approx(float((((rec.clamp(-1, 1) - x0) / 2) ** 2).mean()), rel=1e-5)
    # ε ≡ 0 makes DDIM x_s = √(ᾱ_s/ᾱ_t) x_t, which inversion undoes exactly: error 0 up to round-off
    zero = tables.reproduce_table2(lambda x, t: torch.zeros_like(x), tmp_path, images=imgs, S_list=(10,))
    assert zero[0]["mse"] < 1e-10
    # rank split: the per-rank sums add up to the whole
    parts = [tables.reconstruction_errors(net, imgs[r::2], ABAR, schedule.timesteps(10, 1000, "uniform"), batch_size=2)
             for r in range(2)]
    assert [len(p) for p in parts] == [3, 2] and sum(float(p.sum()) for p in parts) / 5 == pytest.approx(rows[0]["mse"], rel=1e-5)
    per_image = (((rec.clamp(-1, 1) - x0) / 2) ** 2).flatten(1).mean(1)
    assert torch.allclose(torch.cat(parts), torch.cat([per_image[0::2], per_image[1::2]]).double(), rtol=1e-5)


def test_reproduce_table2_with_a_full_disk_at_its_table_keeps_the_earlier_pair(tmp_path, monkeypatch, rename_fails):
    """ENOSPC at table2.md's rename (after table2.csv was written) left the new .csv beside the old .md; now the two are
    written as one: the earlier pair stays, and no temporary file or set-aside folder is left."""

    imgs = torch.randint(0, 256, (3, *SHAPE), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    zero = lambda x, t: torch.zeros_like(x)                                   # noqa: E731
    tables.reproduce_table2(zero, tmp_path, images=imgs, S_list=(10,))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["table2.csv", "table2.md"]
    rename_fails("table2.md")
    with pytest.raises(OSError, match="No space left"):
        tables.reproduce_table2(zero, tmp_path, images=imgs, S_list=(10, 20))      # another table: two columns
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_reproduce_table2_refuses_float_images(net, tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        tables.reproduce_table2(net, tmp_path, images=torch.zeros(2, 1, 8, 8), S_list=(10,))


def test_reproduce_command_line(net, tmp_path, capsys):
    import dataclasses

    from ddimlab import checkpoint, cli, train

    config = dataclasses.replace(train.TrainConfig(), ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                                 num_groups=4, resolution=8)
    ck = checkpoint.save_checkpoint(tmp_path / "ckpt.pt", model=net.state_dict(), ema=net.state_dict(),
                                    config=dataclasses.asdict(config), in_ch=1)
    common = ["--checkpoint", str(ck), "--device", "cpu", "--batch-size", "4", "--steps", "10", "--no-progress"]
    assert cli.main(["reproduce", "table1", *common, "--out", str(tmp_path / "t1"), "--etas", "0,sigma_hat",
                     "--n-samples", "4", "--features", "random"]) == 0
    out = capsys.readouterr().out                    # a digits model's random-feature distance: no paper values beside it
    assert "13.36" not in out and "The paper's values are not shown" in out and (tmp_path / "t1" / "table1.csv").exists()
    assert len(list((tmp_path / "t1" / "samples" / "eta_sigma_hat_S10").glob("*.png"))) == 4
    assert cli.main(["reproduce", "table2", *common, "--out", str(tmp_path / "t2"), "--n-images", "3"]) == 0
    assert "0.014" not in capsys.readouterr().out and (tmp_path / "t2" / "table2.csv").exists()
    # a rerun (here with one S fewer) replaced the finished table, all of table2's work, without a word
    table = (tmp_path / "t2" / "table2.md").read_text()
    assert cli.main(["reproduce", "table2", *common[:-3], "--steps", "5", "--no-progress", "--out", str(tmp_path / "t2")]) == 1
    assert "pass --overwrite to replace them" in capsys.readouterr().err
    assert (tmp_path / "t2" / "table2.md").read_text() == table


def test_score_grid_same_x_T_in_every_cell(net):
    seen = {}

    def score_fn(x):
        seen[len(seen)] = x
        return {"mean": float(x.mean())}
    rows = tables.score_grid(net, score_fn, S_list=(5, 10), eta_list=(0.0, "sigma_hat"), n=5, shape=SHAPE,
                               batch_size=2)
    assert [(r["eta"], r["S"]) for r in rows] == [("0", 5), ("0", 10), ("sigma_hat", 5), ("sigma_hat", 10)]
    expected = generate.sample_indices(net, range(5), SHAPE, ABAR, schedule.timesteps(10, 1000, "uniform"))
    torch.testing.assert_close(seen[1], expected, rtol=1e-4, atol=1e-4)  # batch 2 vs 5: conv round-off
    assert rows[1]["mean"] == pytest.approx(float(expected.mean()), abs=1e-4)


def test_the_papers_values_stand_only_beside_the_papers_measure(net, tmp_path, monkeypatch):
    """reproduce printed DDIM Table 1's CIFAR-10 Inception FIDs beside any measurement, e.g. "1.866 (4.04)" for a
    random-feature distance of a digits model, and Table 2's beside any images on any steps: they read as a comparison
    that is none. They now stand only beside the same measure: Inception FID (CIFAR-10) on quadratic steps, and the
    reconstruction error of 3×32×32 images on uniform steps; elsewhere the table says why they are left out."""
    monkeypatch.setattr(tables, "fid_inception", lambda d, ref, n: 5.0)        # torch-fidelity's Inception, offline
    for spacing, shown in (("quad", True), ("uniform", False)):
        rows = tables.reproduce_table1(net, tmp_path / spacing, S_list=(10,), eta_list=(0.0,), n_samples=2, shape=SHAPE,
                                       spacing=spacing, batch_size=2)
        md = (tmp_path / spacing / "table1.md").read_text()
        assert (rows[0]["paper_fid"] == 13.36) is shown and ("5 (13.36)" in md) is shown
        assert ("The paper's values are not shown" in md) is not shown
    zero = lambda x, t: torch.zeros_like(x)                                     # noqa: E731
    rgb = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for spacing, shown in (("uniform", True), ("quad", False)):
        rows = tables.reproduce_table2(zero, tmp_path / f"t2{spacing}", images=rgb, S_list=(10,), spacing=spacing)
        assert (rows[0]["paper_mse"] == 0.014) is shown
        assert ("(0.014)" in (tmp_path / f"t2{spacing}" / "table2.md").read_text()) is shown
