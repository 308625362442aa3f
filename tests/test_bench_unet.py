"""benchmarks/bench_unet.py's speed-up: the geometric mean of per-round time ratios and its standard error, checked
against repeats of a simulated benchmark (the end-to-end run on the CPU: tests/test_gpu_check.py)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import load_script

from ddimlab import quality

bench_unet = load_script("benchmarks/bench_unet.py")


def simulated_rounds(rng, ratio, rounds, load_sd=0.5, noise_sd=0.05):
    """Per-round times of (diffusers, ddimlab): a load shared by both runs of a round (what pairing removes) times
    each run's own noise."""
    load = np.exp(rng.normal(0, load_sd, rounds))
    ours = load * np.exp(rng.normal(0, noise_sd, rounds))
    return ratio * load * np.exp(rng.normal(0, noise_sd, rounds)), ours


def test_speedup_se_matches_the_spread_of_repeats():
    rng = np.random.default_rng(0)
    runs = [bench_unet.speedup(*simulated_rounds(rng, 1.1, 10)) for _ in range(2000)]
    ratios, ses = np.array([r["ratio"] for r in runs]), np.array([r["se"] for r in runs])
    assert abs(np.median(ratios) / 1.1 - 1) < 0.01
    assert abs(np.sqrt(np.mean(ses ** 2)) / ratios.std() - 1) < 0.1      # the paired SE, not the load's spread
    # the same mean with the two sets' errors taken as independent: the shared load would swamp the SE
    unpaired_se = [1.1 * quality.mean_difference(torch.tensor(np.log(t)), torch.tensor(np.log(o)), paired=False)[1]
                   for t, o in (simulated_rounds(rng, 1.1, 10) for _ in range(200))]
    assert np.median(unpaired_se) > 5 * ratios.std()


def test_speedup_readings():
    rng = np.random.default_rng(1)
    assert bench_unet.speedup(*simulated_rounds(rng, 1.3, 20))["reading"] == "ahead"
    assert bench_unet.speedup(*simulated_rounds(rng, 0.7, 20))["reading"] == "behind"
    assert bench_unet.speedup(*simulated_rounds(rng, 1.0, 20, noise_sd=0.3))["reading"] == "unresolved"
    one = bench_unet.speedup([2.0], [1.0])
    assert one["ratio"] == 2.0 and one["se"] is None and one["reading"] == "unresolved"


@pytest.mark.parametrize("argv,needle", [
    (["--batch", "0"], "argument --batch: must be a positive integer, got 0"),          # was batch 8 without a word
    (["--iters", "0"], "argument --iters: must be a positive integer, got 0"),          # was 10 rounds without a word
    (["--warmup", "-1"], "argument --warmup: must be a non-negative integer, got -1"),
    (["--threads", "0"], "argument --threads: must be an integer in 1..\\d+, got 0"),     # torch's RuntimeError
    (["--peak-tflops", "-5"], r"argument --peak-tflops: must be a number > 0 \(TFLOP/s\), got '-5'"),  # bounds < 0
    (["--peak-tflops", "nan"], "argument --peak-tflops: must be a number > 0"),
    (["--device", "bogus"], "bench_unet.py: error: unknown device 'bogus': use auto, cpu, cuda"),   # torch's traceback
    (["--json", "{tmp}"], r"argument --json: .* names a folder; give a file name"),     # a traceback after the timings
    (["--json", "{tmp}/f"], r"argument --json: .*f already exists; pass --overwrite to replace it or choose another --json"),
    (["--json", "{tmp}/f/r.json"], r"argument --json: cannot create files in .*f is a file, not a folder.*another --json"),
])
def test_bad_arguments_are_one_line_before_any_timing(argv, needle, tmp_path, monkeypatch, capsys):
    """Careless round 27: each of these ran minutes of timings first, or substituted a default, or was a traceback; an
    existing --json (an earlier run's results) was replaced without a word."""
    (tmp_path / "f").write_text("")
    monkeypatch.setattr(bench_unet, "build_pair", lambda *a, **k: pytest.fail("the benchmark started"))
    monkeypatch.setattr(sys, "argv", ["bench_unet.py"])
    with pytest.raises(SystemExit) as stop:
        bench_unet.main(["--preset", "tiny", *(a.format(tmp=tmp_path) for a in argv)])
    said = str(stop.value.code) if stop.value.code != 2 else capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(needle, said), said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_without_diffusers_one_line_says_how_to_install_it(monkeypatch):
    """Was `ModuleNotFoundError: No module named 'diffusers'` from build_pair, after the argument checks."""
    monkeypatch.setitem(sys.modules, "diffusers", None)          # import diffusers raises ImportError
    monkeypatch.setattr(sys, "argv", ["bench_unet.py"])
    with pytest.raises(SystemExit, match=r"^bench_unet.py: error: .*diffusers, which is not installed: pip install "
                                         r"diffusers \(or make bench\)$"):
        bench_unet.main(["--preset", "tiny"])


def test_overwrite_replaces_an_earlier_json_whole(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    earlier = tmp_path / "r.json"
    earlier.write_text('{"device": "an earlier run"}')
    monkeypatch.setattr(sys, "argv", ["bench_unet.py"])
    out = bench_unet.main(["--preset", "tiny", "--device", "cpu", "--batch", "1", "--iters", "2", "--warmup", "0",
                           "--threads", "1", "--json", str(earlier), "--overwrite"])
    assert json.loads(earlier.read_text())["results"].keys() == out["results"].keys() and out["iters"] == 2


def test_ctrl_c_from_the_command_line_is_one_line(tmp_path, monkeypatch, capsys):
    """Was a traceback through the timing loop (helper 154's round left it); no --json is written by a stopped run, nor
    the folder made that it names (round 44)."""
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_unet, "run", interrupted)
    monkeypatch.setattr(bench_unet, "need_diffusers", lambda prog: None)
    monkeypatch.setattr(sys, "argv", ["bench_unet.py"])
    with pytest.raises(SystemExit) as stop:
        bench_unet.cli(["--preset", "tiny", "--json", str(tmp_path / "nodir" / "r.json")])
    assert stop.value.code == 130 and capsys.readouterr().err == "bench_unet.py: interrupted\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 102400000000 bytes."),
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")])
def test_round_28_out_of_memory_is_one_line(error, tmp_path, monkeypatch):
    """Careless round 28: `--batch 100000000` on the CPU (or a batch a GPU cannot hold) was a traceback through the timing
    loop, in every script of benchmarks/; the commands said it in one line. No --json is written."""
    def out_of_memory(args):
        raise error

    monkeypatch.setattr(bench_unet, "run", out_of_memory)
    monkeypatch.setattr(bench_unet, "need_diffusers", lambda prog: None)
    monkeypatch.setattr(sys, "argv", ["bench_unet.py"])
    with pytest.raises(SystemExit, match=r"^bench_unet.py: error: out of memory \(it asked for (102400000000 bytes|2.00 GiB)\): "
                                         r"the sizes asked for do not fit this machine; ask for fewer or smaller images$"):
        bench_unet.cli(["--preset", "tiny", "--batch", "100000000", "--json", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_round_44_a_missing_json_folder_is_made_as_the_commands_make_theirs(tmp_path):
    """Careless round 43 asked whether `--json nodir/j.json`, which makes the folder nodir, should be refused. It does
    what the commands do with a missing folder (`sample --out nodir/sub/x`, `lab --out nodir`, gpu_check.py --out): it
    makes it, and a run that fails leaves none (test_ctrl_c_from_the_command_line_is_one_line). One thing
    differed: `--json nodir/../j.json` wrote j.json and left an empty nodir behind, where `sample --out nodir/../x` is
    refused (`cli.refuse_dotdot_through_missing`); it is now refused the same way, before the timings. The script in a
    subprocess, as a user runs it."""
    pytest.importorskip("diffusers")

    root = Path(__file__).resolve().parents[1]          # run from tmp_path: this checkout's ddimlab, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}

    def bench(json_path):
        return subprocess.run([sys.executable, str(root / "benchmarks" / "bench_unet.py"), "--preset", "tiny", "--device",
                               "cpu", "--batch", "1", "--iters", "2", "--warmup", "0", "--threads", "1", "--json",
                               json_path], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    r = bench("nodir/../j.json")
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == (
        "bench_unet.py: error: --json 'nodir/../j.json' goes up (..) out of nodir, which is no folder; write the path "
        "without it, e.g. --json j.json"), r.stderr
    assert list(tmp_path.iterdir()) == []
    r = bench("nodir/sub/j.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "nodir" / "sub" / "j.json").read_text())["iters"] == 2


def test_round_45_a_json_written_as_a_folder_or_a_dangling_link_is_refused_before_the_timings(tmp_path):
    """`--json out/` (a folder, by its trailing slash, not there yet) wrote the results to a file named `out`, where
    `sample --out out/` is refused as naming a folder (`cli.names_a_folder`, now shared); and `--json link.json`, a
    symbolic link to nothing yet, was replaced by the results without --overwrite, where `sample` counts such a link as
    an output already there. Both are refused before any timing, the link left as it was. The script in a subprocess."""
    pytest.importorskip("diffusers")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    (tmp_path / "link.json").symlink_to(tmp_path / "nowhere.json")
    for given, said in (("out/", "argument --json: out/ names a folder; give a file name"),
                        ("out/.", "argument --json: out/. names a folder; give a file name"),
                        ("link.json", "argument --json: link.json already exists; pass --overwrite to replace it or choose "
                                      "another --json")):
        r = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_unet.py"), "--preset", "tiny", "--device",
                            "cpu", "--batch", "1", "--iters", "2", "--warmup", "0", "--threads", "1", "--json", given],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert r.returncode == 2 and r.stderr.splitlines()[-1] == f"bench_unet.py: error: {said}", (given, r.stderr)
        assert "speed-up" not in r.stdout, r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json"] and (tmp_path / "link.json").is_symlink()
