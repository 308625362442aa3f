"""`make gpu-check` runs benchmarks/gpu_check.py on a lent GPU; here the same pipeline with tiny sizes on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import load_script


@pytest.mark.slow
def test_gpu_check_pipeline_runs_with_tiny_sizes(tmp_path, capsys):
    gpu_check = load_script("benchmarks/gpu_check.py")
    report = gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert "== ddimlab GPU check" in out and "resumed: ok" in out and "outputs finite: yes" in out
    assert report["train"]["resume_ok"] and report["sample"]["finite"] and report["sample"]["n"] == 8
    assert json.loads((tmp_path / "gpu_check.json").read_text())["train"]["steps"] == 4
    assert {b["model"] for b in report["bench"]} == {"ddimlab", "diffusers"}
    ours = next(b for b in report["bench"] if b["model"] == "ddimlab")   # the measured ratio, printed beside it
    line = next(row for row in out.splitlines() if row.startswith("ddimlab, eager"))
    assert f"{ours['forward_vs_diffusers']['ratio']:.3f}x" in line and f"{ours['train_vs_diffusers']['ratio']:.3f}x" in line
    report = gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "b"), "--no-progress", "--no-bench"])
    assert report["bench"] == [] and report["train"]["resume_ok"]


def test_gpu_check_keeps_no_throwaway_run_and_says_mistakes_in_one_line(tmp_path, capsys, monkeypatch):
    """Helper 96: without --out each run left its checkpoint (hundreds of MB on a GPU) in a temporary folder it never
    named; a second run on one --out, a CPU-only torch asked for CUDA, and a file as --out were tracebacks."""
    import tempfile

    gpu_check = load_script("benchmarks/gpu_check.py")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tiny = ["--tiny", "--device", "cpu", "--no-progress", "--no-bench"]
    gpu_check.main(tiny)
    (folder,) = tmp_path.glob("ddimlab_gpu_check_*")
    assert sorted(p.name for p in folder.iterdir()) == ["gpu_check.json"]
    assert f"the report as JSON: {folder / 'gpu_check.json'}" in capsys.readouterr().out
    gpu_check.main([*tiny, "--out", str(tmp_path / "o")])
    for argv, needle in (([*tiny, "--out", str(tmp_path / "o")], "already holds a run"),
                         ([*tiny, "--out", str(folder / "gpu_check.json")], "is a file, not a folder for the check")):
        with pytest.raises(SystemExit, match=f"gpu_check: error: .*{needle}"):
            gpu_check.main(argv)
    assert gpu_check.main([*tiny, "--out", str(tmp_path / "o"), "--overwrite"])["train"]["resume_ok"]


def test_gpu_check_interrupted_says_so_in_one_line_and_removes_its_throwaway_run(tmp_path, capsys, monkeypatch):
    """Helper 99: Ctrl-C (or `timeout -s INT`) was a 50-line traceback and left the unnamed temporary run behind."""
    import tempfile

    gpu_check = load_script("benchmarks/gpu_check.py")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def ctrl_c(args, device, run):             # after training: the run is on disk
        assert (run / "ckpt.pt").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check, "sample", ctrl_c)
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--tiny", "--device", "cpu", "--no-progress", "--no-bench"])
    assert stop.value.code == 130 and capsys.readouterr().err.strip() == "gpu_check: interrupted"
    assert list(tmp_path.glob("ddimlab_gpu_check_*")) == []


def test_a_run_in_the_way_is_said_before_the_benchmark(tmp_path, monkeypatch):
    """Careless round 32: an --out that held a run (a second check without --overwrite) was refused by the training,
    after stage 1's benchmark had run its minutes on the lent GPU."""
    gpu_check = load_script("benchmarks/gpu_check.py")
    monkeypatch.setattr(gpu_check, "bench", lambda *a: pytest.fail("the benchmark ran"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt.pt").write_bytes(b"an earlier run")
    with pytest.raises(SystemExit, match="gpu_check: error: .*run already holds a run .*start again with --overwrite"):
        gpu_check.main(["--tiny", "--device", "cpu", "--no-progress", "--out", str(tmp_path)])
    assert (tmp_path / "run" / "ckpt.pt").read_bytes() == b"an earlier run"


def test_round_33_the_summary_says_the_precision_and_sizes_that_ran(tmp_path):
    """`gpu_check.py --tiny --device cpu` printed "training (4 steps, batch 8, bf16 on CUDA)" for a float32 run on the
    CPU (train and generate use bf16 autocast on CUDA only). Each line now says what ran, as the JSON records it, and
    the heading says the sizes were the tiny ones."""
    import torch
    from cli_support import _run_scripts

    r = _run_scripts(f"load_script('benchmarks/gpu_check.py').main(['--tiny', '--device', 'cpu', '--no-bench', "
                     f"'--no-progress', '--out', {str(tmp_path)!r}])")
    assert r.returncode == 0, r.stderr
    summary = r.stdout[r.stdout.index("== ddimlab GPU check"):]
    assert "bf16" not in summary and "CUDA" not in summary, summary
    assert "== ddimlab GPU check on cpu (torch " in summary and ", tiny sizes, " in summary, summary
    assert "training (4 steps, batch 8, float32 on cpu)" in summary and "(8 images, DDIM-3, float32 on cpu)" in summary
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["tiny"] and report["train"]["precision"] == report["sample"]["precision"] == "float32 on cpu"
    gpu_check = load_script("benchmarks/gpu_check.py")
    assert gpu_check.precision(torch.device("cuda"), True) == "bf16 autocast on cuda"
    assert gpu_check.precision(torch.device("cuda"), False) == "float32 on cuda"


def test_round_43_a_run_in_the_way_is_not_told_to_resume_which_gpu_check_cannot(tmp_path, capsys):
    """A second check on one --out was refused with "continue it with --resume, start again with --overwrite, or choose
    another --out", and gpu_check has no --resume (argparse: "unrecognized arguments: --resume"). The refusal now names
    what gpu_check offers; `train` still names --resume."""
    gpu_check = load_script("benchmarks/gpu_check.py")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt.pt").write_bytes(b"an earlier run")
    with pytest.raises(SystemExit) as refused:
        gpu_check.main(["--tiny", "--device", "cpu", "--no-progress", "--no-bench", "--out", str(tmp_path)])
    said = str(refused.value.code)
    assert said.startswith("gpu_check: error: ") and "--resume" not in said, said
    assert said.endswith("already holds a run (ckpt.pt); start again with --overwrite, or choose another --out"), said
    with pytest.raises(SystemExit):
        gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--resume"])   # the option it was told of
    assert "unrecognized arguments: --resume" in capsys.readouterr().err
    from ddimlab.train import RunExistsError, _check_out
    with pytest.raises(RunExistsError, match="continue it with --resume, start again with --overwrite"):
        _check_out(tmp_path / "run", resume=False, overwrite=False)


def test_round_45_a_reproduce_cell_as_out_is_refused_as_train_refuses_it(tmp_path):
    """`train --out CELL` is refused where CELL is a `reproduce table1` cell (round 44), but gpu_check's own --out was
    not: it wrote gpu_check.json and run/ among the cell's samples (exit 0) after minutes of benchmark and training. Now
    the same one line (`train.refuse_sample_folder`), before any of it. The script in a subprocess."""
    from cli_support import _run_scripts

    cell = tmp_path / "eta0_S2"
    cell.mkdir()
    (cell / "settings.json").write_text(json.dumps({"seed": 0, "S": 2, "eta": "0"}))
    (cell / "000000.png").write_bytes(b"a sample")
    r = _run_scripts(f"load_script('benchmarks/gpu_check.py').main(['--tiny', '--device', 'cpu', '--no-bench', "
                     f"'--no-progress', '--out', {str(cell)!r}])")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == (f"gpu_check: error: --out {cell} is a folder of samples for FID (its settings.json says "
                                "how `reproduce` made them), which holds only those; choose another --out"), r.stderr
    assert sorted(p.name for p in cell.iterdir()) == ["000000.png", "settings.json"]


def test_round_45_an_earlier_report_is_not_replaced_and_no_folder_is_left_on_the_way(tmp_path):
    """An --out holding an earlier check's gpu_check.json (its run/ removed, as the README's hundreds of MB invite) had
    the report replaced at the end without a word, where a run there is refused without --overwrite (and bench_unet.py
    refuses an existing --json); and `--out nodir/../x` left an empty nodir behind, as bench_unet.py's --json did before
    round 44 (`cli.refuse_dotdot_through_missing`). Both are refused before the benchmark; the report is kept as it was.
    The script in a subprocess."""
    root = Path(__file__).resolve().parents[1]       # run from tmp_path/w: nodir would be made there
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "gpu_check.json").write_text('{"device": "an H100, once"}')
    (tmp_path / "w").mkdir()
    code = "gpu_check = load_script('benchmarks/gpu_check.py')\n"
    for out in (tmp_path / "gpu", "nodir/../x"):
        code += (f"try:\n    gpu_check.main(['--tiny', '--device', 'cpu', '--no-bench', '--no-progress', '--out', "
                 f"{str(out)!r}])\nexcept SystemExit as e:\n    print(e.code)\n")
    r = subprocess.run([sys.executable, "-c", f"import sys\nsys.path.insert(0, {str(root / 'tests')!r})\n"
                        f"from cli_support import load_script\n{code}"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path / "w", env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.splitlines() == [
        f"gpu_check: error: {tmp_path / 'gpu' / 'gpu_check.json'} already exists; pass --overwrite to replace it (an "
        f"earlier check's report) or choose another --out",          # files.refuse_existing's words, as sample's
        "gpu_check: error: --out 'nodir/../x' goes up (..) out of nodir, which is no folder; write the path without it, "
        "e.g. --out x"], r.stdout
    assert (tmp_path / "gpu" / "gpu_check.json").read_text() == '{"device": "an H100, once"}'
    assert sorted(p.name for p in (tmp_path / "gpu").iterdir()) == ["gpu_check.json"]
    assert list((tmp_path / "w").iterdir()) == []
