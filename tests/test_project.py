"""Project hygiene: environment.yml and pyproject.toml agree; the Makefile installs what the README says;
notebooks are executed, small and linked."""
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# conda-forge's pytorch, or the metapackages that pin its CPU or CUDA variant, is pip's torch
CONDA_TO_PIP = {"pytorch": "torch", "pytorch-cpu": "torch", "pytorch-gpu": "torch"}
CONDA_ONLY = {"python", "pip"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_name(r) for r in extra}
    return names


def _environment_names() -> set[str]:
    names = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        m = re.match(r"^\s+-\s+([A-Za-z0-9_.\-]+)", line)
        if m and not line.strip().startswith("- -e") and m.group(1) not in ("pip:",):
            names.add(_name(m.group(1)))
    names = {CONDA_TO_PIP.get(n, n) for n in names} - CONDA_ONLY
    return names


def test_environment_and_pyproject_name_the_same_dependencies():
    env, py = _environment_names(), _pyproject_names()
    assert env == py, f"only in environment.yml: {sorted(env - py)}; only in pyproject.toml: {sorted(py - env)}"


def test_environment_installs_the_package_in_editable_mode():
    assert re.search(r"^\s+- -e \.\s*$", (ROOT / "environment.yml").read_text(), re.M)


def _environment_section(key: str) -> list[str]:
    """The `- item` lines directly under a top-level key of environment.yml (no YAML parser needed)."""
    text = (ROOT / "environment.yml").read_text()
    block = re.search(rf"^{key}:\n((?:[ \t]+.*\n?)*)", text, re.M).group(1)
    return [m.group(1) for m in re.finditer(r"^  - ([^\s#].*?)\s*$", block, re.M)]


def test_environment_uses_conda_forge_pytorch_only():
    """The pytorch channel stopped publishing after torch 2.5; conda-forge builds the CPU and CUDA variants."""
    assert _environment_section("channels") == ["conda-forge", "nodefaults"]
    deps = _environment_section("dependencies")
    assert any(re.match(r"pytorch(-cpu|-gpu)?\b", d) for d in deps), deps
    assert not [d for d in deps if "::" in d or d.startswith(("pytorch-cuda", "cudatoolkit", "cpuonly"))]
    # pip gets only the package itself: a pip-installed torch-fidelity or diffusers could pull PyPI's torch
    # (or torchvision built for it) over conda's
    pip = re.findall(r"^      - (.+?)\s*$", (ROOT / "environment.yml").read_text(), re.M)
    assert pip == ["-e ."], pip


def _make(*args: str) -> list[str]:
    """Run make in the repository with only ARGS set (none of TORCH, VENV, ... from the caller's make)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCH", "VENV", "USER_ID", "JUPYTER_ARGS", "CPU_KERNELS") and not k.startswith(("MAKE", "MFLAGS"))}
    out = subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", *args],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.splitlines()


NO_VENV = "/nonexistent/ddimlab-test-venv"


def _make_dry_run(*args: str, venv: str = NO_VENV) -> list[str]:
    """`make -n ARGS`, by default with a VENV that does not exist, so every install step is printed, and none is run."""
    return _make("-n", f"VENV={venv}", *args)


def _dry_run_commands(*args: str, venv: str = NO_VENV) -> list[str]:
    """`_make_dry_run(ARGS)` with each command's continuation lines joined into one."""
    return "\n".join(_make_dry_run(*args, venv=venv)).replace("\\\n", " ").splitlines()


def _pip_installs(lines: list[str]) -> list[list[str]]:
    """The arguments of each `pip install` that make prints, without the quiet, no-compile and constraints flags."""
    installs = []
    for line in lines:
        if line.startswith(f"{NO_VENV}/bin/pip install"):
            argv = shlex.split(line)[2:]
            if "-c" in argv:
                del argv[argv.index("-c"):argv.index("-c") + 2]
            installs.append([a for a in argv if a not in ("-q", "--no-compile")])
    return installs


def _constraints() -> dict[str, str]:
    """constraints.txt as {name: version}, checking each line's form."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            m = re.fullmatch(r'([a-z0-9-]+)==([0-9.]+); python_version >= "3.11"', line)
            assert m, line
            pins[m.group(1)] = m.group(2)
    return pins


def test_every_make_install_but_pips_own_upgrade_reads_the_constraints():
    lines = [line for t in ("demo", "test", "notebooks", "bench") for line in _dry_run_commands(t) if " install " in line]
    assert len(lines) == 3 + 3 * 4, lines     # pip, torch, the package; and each extra
    for line in lines:
        argv = shlex.split(line)
        assert argv[-1] == "pip" or argv[argv.index("-c") + 1] == "constraints.txt", line


def test_constraints_pin_every_dependency_but_torch():
    """torch is pinned by TORCH; torch-fidelity (the `fid` extra) is installed by no target."""
    assert set(_constraints()) >= _pyproject_names() - {"torch", "torch-fidelity"}


def test_readme_names_the_versions_make_installs():
    sentence = re.search(r"The committed outputs pass on Python 3.11 with (.*?)\(", (ROOT / "README.md").read_text(),
                         re.S).group(1)
    named = dict(re.findall(r"([a-z-]+) ([0-9][0-9.]*[0-9])", sentence.replace("\n", " ")))
    assert named.pop("torch") == _torch_pip_line(_make_dry_run("install"))[0].split("==")[1]
    assert named and all(_constraints()[k] == v for k, v in named.items()), named


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(), reason="not the .venv that make builds")
def test_make_venv_has_the_pinned_versions():
    from importlib.metadata import PackageNotFoundError, version
    wrong = {}
    for name, pin in _constraints().items():
        try:
            if version(name) != pin:
                wrong[name] = version(name)
        except PackageNotFoundError:
            pass    # an extra this venv has not installed
    assert not wrong, f"installed {wrong}, pinned {_constraints()}"


def _torch_pip_line(lines: list[str]) -> list[str]:
    torch = [argv for argv in _pip_installs(lines) if any(a.startswith("torch") for a in argv)]
    assert len(torch) == 1, lines
    return torch[0]


CPU_TORCH = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("torch", [CPU_TORCH, "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126",
                                   "torch"])
def test_make_install_passes_torch_to_pip_unchanged(torch):
    lines = _make_dry_run("install", f"TORCH={torch}")
    assert _torch_pip_line(lines) == torch.split()
    # the index is for torch only: the package and its other dependencies still come from PyPI
    assert sum("--index-url" in line for line in lines if "pip install" in line) == ("--index-url" in torch)


@pytest.mark.parametrize("target,extra", [("demo", None), ("lab", None), ("test", "test"), ("test-fast", "test"),
                                          ("notebooks", "notebooks"), ("jupyter", "notebooks"), ("bench", "bench"),
                                          ("gpu-check", "bench")])
def test_make_installs_only_the_extra_a_target_needs(target, extra):
    """The main job installs torch and the package, nothing else; other targets add their extra once."""
    installs = _pip_installs(_make_dry_run(target))
    packages = [argv[-1] for argv in installs if argv[0] == "-e"]
    assert packages == ["."] + ([f".[{extra}]"] if extra else []), installs
    assert extra is None or extra in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_make_default_torch_is_the_readme_pin():
    """The default is PyPI's torch==X (CUDA on Linux); the README's CPU-only command pins the same X."""
    default = _torch_pip_line(_make_dry_run("install"))
    assert len(default) == 1 and re.fullmatch(r"torch==[0-9.]+", default[0]), default
    readme = (ROOT / "README.md").read_text()
    assert f'"{default[0]} --index-url https://download.pytorch.org/whl/cpu"' in readme
    assert f"not set: `{default[0]}`" in readme


@pytest.mark.parametrize("uid", ["0", "1000"])
def test_make_jupyter_allows_root_only_as_root(uid):
    """Jupyter exits as root without --allow-root (containers run as root); never pass it otherwise."""
    [cmd] = [line for line in _make_dry_run("jupyter", f"USER_ID={uid}") if "jupyter lab" in line]
    assert ("--allow-root" in cmd.split()) == (uid == "0"), cmd


def test_make_jupyter_reads_the_real_user_id():
    [cmd] = [line for line in _make_dry_run("jupyter") if "jupyter lab" in line]
    assert ("--allow-root" in cmd.split()) == (os.geteuid() == 0), cmd


def test_make_clean_keeps_outputs():
    clean = _make_dry_run("clean")
    assert clean and not [line for line in clean if "outputs" in line], clean
    assert _make_dry_run("clean-outputs") == ["rm -rf outputs"]


def test_make_test_trains_the_shared_model_first_then_runs_every_test_file_and_notebook_once():
    """Notebooks 06-08 load the demo's model, trained on two threads: `make test` trains it before the workers start
    (beside a busy worker two threads are over three times slower), then hands xdist every file once."""
    lines = _dry_run_commands("test")
    [model] = [i for i, line in enumerate(lines) if "-m ddimlab.pretrained" in line]
    [pytest_at] = [i for i, line in enumerate(lines) if "pytest" in line]
    assert model < pytest_at, lines
    cmd = shlex.split(lines[pytest_at])
    assert "loadfile" in cmd
    paths = [a for a in cmd if a == "tests" or a.endswith(".ipynb")]
    notebooks = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(paths) == sorted(["tests", *notebooks]), paths


def test_make_lets_python_cache_compiled_modules_where_the_environment_forbids_it():
    """Containers often set PYTHONDONTWRITEBYTECODE=1; then every Python process of `make test` compiled torch's modules
    again (the suite took 370 s so, 272 s with the cache). The Makefile's recipes run without it."""
    probe = 'probe:\n\t@echo "[$$PYTHONDONTWRITEBYTECODE]"\n'
    r = subprocess.run(["make", "-s", "-f", "Makefile", "-f", "-", "probe"], input=probe, cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


@pytest.mark.parametrize("given,seen", [("rel/cache", str(ROOT / "rel/cache")), ("./c", str(ROOT / "c")),
                                         ("/abs/cache", "/abs/cache"), ("~/cache", "~/cache"), ("", "")])
@pytest.mark.parametrize("how", ["environment", "make argument"])
def test_make_passes_a_relative_cache_on_as_an_absolute_one(given, seen, how):
    """DDIMLAB_CACHE=cache make test trained the digits model into ./cache, and then each notebook (its kernel runs in
    notebooks/) looked in notebooks/cache and trained it again. The recipes see it absolute, from the repository."""
    probe = 'probe:\n\t@echo "[$$DDIMLAB_CACHE]"\n'
    env = {k: v for k, v in os.environ.items() if k != "DDIMLAB_CACHE"}
    args = ["make", "-s", "-f", "Makefile", "-f", "-", "probe"]
    if how == "environment":
        env["DDIMLAB_CACHE"] = given
    else:
        args.append(f"DDIMLAB_CACHE={given}")
    r = subprocess.run(args, input=probe, cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"[{seen}]", (r.stdout, r.stderr)


def _leading_assignments(line: str, program: str) -> dict[str, str]:
    """The VAR=value words of a shell command line up to the word that ends with PROGRAM."""
    words = shlex.split(line)
    end = next(i for i, w in enumerate(words) if w.endswith(program))
    return dict(w.split("=", 1) for w in words[:end] if re.fullmatch(r"[A-Z_]+=.*", w))


CPU_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _notebook_envs(*args: str) -> list[dict[str, str]]:
    """The variables `make test`, `make notebooks` and `make jupyter` set for the notebooks, `make test` for the model it
    trains first, and `make demo` for its run, in that order."""
    test_lines = _dry_run_commands("test", *args)
    [test] = [line for line in test_lines if "pytest" in line]
    [model] = [line for line in test_lines if "-m ddimlab.pretrained" in line]
    [execute] = [line for line in _dry_run_commands("notebooks", *args) if "nbconvert" in line]
    [lab] = [line for line in _dry_run_commands("jupyter", *args) if "jupyter lab" in line]
    [demo] = [line for line in _dry_run_commands("demo", *args) if "ddimlab demo" in line]
    return [_leading_assignments(test, "pytest"), _leading_assignments(execute.split("do ", 1)[1], "jupyter"),
            _leading_assignments(lab, "jupyter"), _leading_assignments(model, "python"),
            _leading_assignments(demo, "python")]


@pytest.mark.parametrize("kernels", ["AVX512", "AVX2", "DEFAULT", ""])
def test_notebooks_are_computed_on_avx2_kernels_where_torch_would_pick_avx512(kernels):
    """On an AVX-512 CPU torch would round differently, train another model and print other last digits (seen on an
    AMD EPYC): there `make test`, `make notebooks` and `make jupyter` cap torch, oneDNN and MKL at AVX2 (the values
    each reads), and so does `make demo`, whose model the notebooks load (the kernels are part of its cache key);
    `make test` trains that model, before its workers, in the notebooks' environment. Nowhere else: torch would run
    AVX2 kernels on a CPU without AVX2 if told to."""
    test, execute, lab, model, demo = _notebook_envs(f"CPU_KERNELS={kernels}")
    # how OpenMP's idle threads wait (PASSIVE: asleep, not spinning, beside the other worker) changes no number
    assert test.pop("OMP_WAIT_POLICY") == "PASSIVE" and "OMP_WAIT_POLICY" not in execute
    assert test == execute == model and "OMP_NUM_THREADS" in test, (test, execute, model)
    cap = CPU_ISA if kernels == "AVX512" else {}
    assert {k: v for k, v in test.items() if k in CPU_ISA} == cap and lab == cap and demo == cap, (test, lab, demo)


def test_make_asks_torch_which_kernels_it_would_pick_and_torch_obeys_the_cap():
    """With this interpreter as the venv, make's own question: capped exactly when torch, uncapped, picks AVX-512;
    and under the cap torch runs no AVX-512 kernels (both parts can fail only on an AVX-512 CPU)."""
    probe = [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"]
    uncapped = {k: v for k, v in os.environ.items() if k not in CPU_ISA}
    picks = subprocess.run(probe, env=uncapped, capture_output=True, text=True, check=True).stdout.strip()
    [test] = [line for line in _dry_run_commands("test", venv=sys.prefix) if "pytest" in line]
    assert ("ATEN_CPU_CAPABILITY=avx2" in test) == ("AVX512" in picks), (picks, test)
    capped = subprocess.run(probe, env={**os.environ, **CPU_ISA}, capture_output=True, text=True, check=True)
    assert "AVX512" not in capped.stdout, capped.stdout


def test_make_install_says_when_torch_changed(tmp_path):
    """With a built .venv (stamp newer than pyproject.toml and constraints.txt) `make install` runs no pip, only the
    TORCH check."""
    venv = tmp_path / "venv"
    venv.mkdir()
    stamp = venv / ".installed"
    stamp.write_text(CPU_TORCH + "\n")
    newer = max((ROOT / f).stat().st_mtime for f in ("pyproject.toml", "constraints.txt")) + 1000
    os.utime(stamp, (newer, newer))
    # PYTHON=false: were make to rebuild after all, it would fail at once instead of building a venv
    same = _make("-s", f"VENV={venv}", "PYTHON=false", "install", f"TORCH={CPU_TORCH}")
    changed = _make("-s", f"VENV={venv}", "PYTHON=false", "install", "TORCH=torch")
    assert same == []
    assert len(changed) == 1 and "make clean" in changed[0] and CPU_TORCH in changed[0], changed


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_executed_small_and_python3(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    counts = [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"execution counts not sequential: {counts}"
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size // 1024} KiB"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_sources_hold_no_control_characters(path):
    """A LaTeX command written through a non-raw Python string loses its backslash to an escape: "\\varepsilon" becomes
    a vertical tab and "arepsilon" (notebook 05 §6 printed that), "\\frac" a form feed, "\\beta" a backspace. Cell sources
    hold newlines, and no other control character."""
    nb = json.loads(path.read_text())
    bad = [(i, repr(m.group()), "".join(c["source"])[max(0, m.start() - 20):m.end() + 10])
           for i, c in enumerate(nb["cells"]) for m in re.finditer(r"[\x00-\x09\x0b-\x1f\x7f]", "".join(c["source"]))]
    assert not bad, f"{path.name}: control characters (cell, character, context): {bad}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_that_trains_or_loads_a_model_prints_its_weights_first(path):
    """Each CPU trains the digits model to weights of its own; notebooks/conftest.py compares a notebook's cells from
    its weights line on only where this machine's weights are the committed outputs' (README, "The notebooks"). A
    cell that loads the model without printing the line would be compared on every CPU, and fail on all but one."""
    from ddimlab.nb import WEIGHTS_LINE

    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    loads = [k for k, c in enumerate(cells) if "pretrained.digits_model(" in "".join(c["source"])]
    if not loads:
        return
    first = cells[loads[0]]
    printed = "".join("".join(o["text"]) for o in first["outputs"] if o["output_type"] == "stream")
    assert "weights_line(model)" in "".join(first["source"]) and WEIGHTS_LINE.search(printed), \
        f"{path.name}: code cell {loads[0]} loads the digits model without printing nb.weights_line(model)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_lists_library_functions_that_point_back(path):
    """The closing cell lists `module.function`s; each exists and its docstring names the notebook."""
    nb = json.loads(path.read_text())
    last_md = [c for c in nb["cells"] if c["cell_type"] == "markdown"][-1]
    text = "".join(last_md["source"])
    assert "Library functions introduced" in text
    listed = re.findall(r"`(?:ddimlab\.)?([a-z_]+)\.([A-Za-z_][A-Za-z0-9_]*)(?:\.([a-z_][A-Za-z0-9_]*))?`", text)
    assert listed, "no `module.function` entries in the closing cell"
    number = path.stem[:2]
    for module, name, method in listed:                     # module.function, or module.Class.method
        obj = getattr(importlib.import_module(f"ddimlab.{module}"), name)
        obj = getattr(obj, method) if method else obj
        doc = obj.__doc__ or ""
        assert re.search(rf"notebook {number}\b|notebook {int(number)}\b|{path.stem}", doc), \
            f"ddimlab.{module}.{name}{'.' + method if method else ''} docstring does not point back to notebook {number}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_does_not_redefine_library_functions(path):
    import ddimlab  # noqa: F401
    nb = json.loads(path.read_text())
    defined = set()
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            defined |= set(re.findall(r"^def ([A-Za-z_][A-Za-z0-9_]*)", "".join(c["source"]), re.M))
    library = set()
    for mod in ("schedule", "diffusion", "gaussian", "elbo", "samplers", "ode", "toy"):
        try:
            library |= {n for n in dir(importlib.import_module(f"ddimlab.{mod}")) if not n.startswith("_")}
        except ImportError:
            pass
    assert not defined & library, f"cells redefine library functions: {sorted(defined & library)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_check_line_tests_a_condition(path):
    """`check(True, ...)` after a loop of asserts prints a check line that cannot fail (notebook 08 had two): the
    condition goes into the check itself."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    fixed = [k for k, c in enumerate(cells) if re.search(r"\bcheck\(\s*(True|1)\s*,", "".join(c["source"]))]
    assert not fixed, f"{path.name}: code cells {fixed} print a check line whose condition is a constant"


def _package_imports() -> dict[str, set[str]]:
    """module -> the ddimlab modules it imports, at module level or inside functions (`from . import x`,
    `from .x import y`, `import ddimlab.x`)."""
    import ast

    modules = {p.stem for p in (ROOT / "ddimlab").glob("*.py")}
    graph = {}
    for path in (ROOT / "ddimlab").glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddimlab"):
                deps |= {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ddimlab.")}
        graph[path.stem] = (deps & modules) - {path.stem, "__main__"}
    return graph


def test_a_run_that_leaves_files_in_the_repository_root_fails(tmp_path):
    """`root_guard` (conftest.py): a suite whose tests all pass, one of which made a folder in the root (as
    `reproduce_table2(net, "unused", …)` did), exits 1 and names it; rootdir is tmp_path (its pytest.ini)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_x.py").write_text("from pathlib import Path\n\n\ndef test_writes_to_a_relative_path():\n"
                                        "    (Path(__file__).parent / 'unused').mkdir()\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "root_guard", "-p", "no:cacheprovider", "test_x.py"],
                       cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    assert r.returncode == 1 and "1 passed" in r.stdout, r.stdout + r.stderr
    assert f"the run left unused in the repository root {tmp_path}" in r.stdout
    assert "warning" not in r.stdout                    # not a git checkout: no stale entries named


def test_the_root_guard_names_untracked_entries_that_were_there_before_the_run(tmp_path):
    """A stale, git-ignored `.interpolation.pair.lock` in the root hid a test that wrote it again from the guard here
    (CI's clean clone caught it): an untracked entry present before the run is named, a tracked one is not."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / ".gitignore").write_text(".*.lock\n")
    (tmp_path / "test_x.py").write_text("def test_nothing():\n    pass\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    (tmp_path / ".interpolation.pair.lock").touch()
    (tmp_path / ".venv").mkdir()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "root_guard", "-p", "no:cacheprovider", "test_x.py"],
                       cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"the repository root {tmp_path} held .interpolation.pair.lock before the run, which git" in r.stdout
    assert "pytest.ini" not in r.stdout.split("warning:")[1] and ".venv" not in r.stdout


def test_the_package_import_graph_has_no_cycle():
    """Issue #11: maths at the bottom, samplers above, model/data/training beside, evaluation above, the CLI on
    top; a function-level import counts as an edge too, so a cycle cannot hide in one."""
    graph, state, path = _package_imports(), {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not [m for m, deps in graph.items() if "cli" in deps and m != "__main__"], "a library module imports cli"


def test_no_study_note_references_anywhere():
    """Issue #9: readers do not have the study notes; cite the papers."""
    files = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "ddimlab").rglob("*.py")) + [ROOT / "README.md"]
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in files
            for m in re.finditer(r"seeds? ?(note )?0\d", p.read_text(), re.I)]
    assert not hits, hits


def test_readme_solver_table_is_the_committed_benchmark_report():
    """Every ratio ± SE of ddimlab's fixed and tuned iPNDM in docs/bench_samplers.txt (the run the README's "ODE solvers"
    table quotes) appears in the README: a rerun that changes a number changes the table too."""
    report = (ROOT / "docs" / "bench_samplers.txt").read_text()
    readme = (ROOT / "README.md").read_text()
    ratios = re.findall(r"ddimlab (?:fixed|tuned)\s+rms \S+ \(ratio (\d+\.\d\d) ± (\d\.\d\d)", report)
    assert len(ratios) == 12
    assert [f"{r} ± {se}" for r, se in ratios if f"{r} ± {se}" not in readme] == []
