"""Project hygiene: environment.yml and pyproject.toml agree; notebooks are executed, small and linked."""
import importlib
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}
CONDA_ONLY = {"python", "pip", "pytorch-cuda"}


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


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_executed_small_and_python3(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    counts = [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"execution counts not sequential: {counts}"
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size // 1024} KiB"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_lists_library_functions_that_point_back(path):
    """The closing cell lists `module.function`s; each exists and its docstring names the notebook."""
    nb = json.loads(path.read_text())
    last_md = [c for c in nb["cells"] if c["cell_type"] == "markdown"][-1]
    text = "".join(last_md["source"])
    assert "Library functions introduced" in text
    listed = re.findall(r"`(?:ddimlab\.)?([a-z_]+)\.([A-Za-z_][A-Za-z0-9_]*)", text)
    assert listed, "no `module.function` entries in the closing cell"
    number = path.stem[:2]
    for module, name in listed:
        obj = getattr(importlib.import_module(f"ddimlab.{module}"), name)
        doc = obj.__doc__ or ""
        assert re.search(rf"notebook {number}\b|notebook {int(number)}\b|{path.stem}", doc), \
            f"ddimlab.{module}.{name} docstring does not point back to notebook {number}"


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
