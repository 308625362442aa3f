# Two commands for a fresh clone:  `make demo` (the main job) and `make test` (the suite + notebooks).
# Both build .venv once and reuse it (`make clean` removes it; the next command rebuilds it): torch and the package,
# then, once each, the extra that a target needs (test: the `test` extra; jupyter, notebooks: `notebooks`; bench,
# gpu-check: `bench`). The demo needs no extra. Every package but torch at the version in constraints.txt.
# TORCH is passed to `pip install` unchanged, before the package. Its default, torch==2.13.0 from PyPI,
# is PyPI's default build: the CUDA 13.0 build on Linux (several GB with its nvidia-* wheels), the CPU build
# on macOS and Windows. CPU only on any OS:
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# Another CUDA version: the same with .../whl/cu126 (or another cuXYZ that pytorch.org lists).
PYTHON ?= python3
# Python caches compiled modules in __pycache__ (here: .venv and the package). Containers often set
# PYTHONDONTWRITEBYTECODE=1, and then each Python process of `make test` (its workers, the notebooks' kernels, the
# tests' CLI runs) compiled torch's modules again: here its pytest took 370 s with PYTHONDONTWRITEBYTECODE=1 and
# 272 s without (docs/make_test_times.md).
unexport PYTHONDONTWRITEBYTECODE
# A relative DDIMLAB_CACHE names another folder in each process's working folder (pytest's in the repository, each
# notebook kernel's in notebooks/), and the notebooks would train the digits model again: the recipes get it absolute.
ifneq ($(filter-out /% ~%,$(DDIMLAB_CACHE)),)
override DDIMLAB_CACHE := $(abspath $(DDIMLAB_CACHE))
export DDIMLAB_CACHE
endif
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
# --no-compile: pip would byte-compile every module of torch and the extras up front (in one paired measurement here,
# torch, the package and the test extra took 141 s with it, 80 s without); Python compiles what it imports on first use.
# -c: the versions in constraints.txt, those the committed outputs were made with.
PIP     = $(BIN)/pip install -q --no-compile -c constraints.txt
USER_ID ?= $(shell id -u)
JUPYTER_ARGS ?=
# The notebooks' outputs are compared as text; on an AVX-512 CPU torch, oneDNN and MKL would pick AVX-512 kernels, which
# round differently and print other last digits (README, "The notebooks"). So there, and only there (torch takes
# ATEN_CPU_CAPABILITY=avx2 without asking the CPU), test, notebooks and jupyter run on AVX2 kernels, and so does demo, so
# that it trains (or loads) the very model the notebooks load: the kernels are part of its cache key (ddimlab/pretrained.py).
# CPU_KERNELS is asked of the venv's torch when a recipe first needs it, after .venv is built.
CPU_KERNELS ?= $(shell unset ATEN_CPU_CAPABILITY; $(BIN)/python -c \
  'import torch; print(torch.backends.cpu.get_cpu_capability())' 2>/dev/null)
CPU_ISA = $(if $(findstring AVX512,$(CPU_KERNELS)),ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
NBENV   = OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONHASHSEED=0 MPLBACKEND=agg $(CPU_ISA)
NBVAL   = --nbval --nbval-sanitize-with notebooks/sanitize.cfg
WORKERS ?= 2           # pytest-xdist processes for `make test`; each test file or notebook stays in one

.PHONY: install demo test test-fast lint notebooks jupyter bench gpu-check lab clean clean-outputs

install: $(VENV)/.installed    ## build .venv if needed; say so when TORCH differs from what it was built with
	@built="$$(cat $(VENV)/.installed)"; [ -z "$$built" ] || [ "$$built" = '$(TORCH)' ] || \
	  echo "note: $(VENV) was built with TORCH=$$built; run 'make clean' first to rebuild it with TORCH=$(TORCH)"

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) $(TORCH)
	$(PIP) -e .
	echo '$(TORCH)' > $@

# One optional-dependency group of pyproject.toml, installed once (again after pyproject.toml or constraints.txt change).
$(VENV)/.extra-%: $(VENV)/.installed
	$(PIP) -e ".[$*]"
	touch $@

demo: install          ## main job: exact-score Table 1, then train digits on CPU and sample
	$(CPU_ISA) $(BIN)/python -m ddimlab demo --out outputs/demo --overwrite

lab: install           ## only the exact-score lab tables and figure
	$(BIN)/python -m ddimlab lab --out outputs/lab --overwrite

# The demo's digits model, which notebooks 06-08 load, is trained first if not cached (2 to 4 minutes on two threads): two
# threads train it 1.5 times as fast as one on an idle machine, and over three times slower beside a busy worker.
# Then the two workers. Where each runs two threads (notebooks 06-09, the tests that train), OpenMP's idle threads spin
# while waiting and keep the other worker off its core; OMP_WAIT_POLICY=PASSIVE makes them sleep instead (the tests that
# train the digits preset, beside a busy process: 31 s spinning, 15 s passive; docs/make_test_times.md).
test: install lint $(VENV)/.extra-test ## lint, unit tests and every notebook under nbval
	$(NBENV) $(BIN)/python -m ddimlab.pretrained
	$(NBENV) OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -n $(WORKERS) --dist loadfile tests \
	  $(wildcard notebooks/[0-9][0-9]_*.ipynb) $(NBVAL) -p no:cacheprovider

test-fast: install $(VENV)/.extra-test
	$(BIN)/pytest tests -m "not slow" -p no:cacheprovider

lint: install $(VENV)/.extra-test ## ruff, with the rules in pyproject.toml
	$(BIN)/ruff check ddimlab tests benchmarks docs

notebooks: install $(VENV)/.extra-notebooks ## re-execute every notebook in place (then `make test` compares them)
	cd notebooks && for nb in [0-9][0-9]_*.ipynb; do \
	  echo "executing $$nb"; \
	  $(NBENV) ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=600 $$nb || exit 1; \
	done

# Jupyter refuses to start as root (the usual user in containers) unless given --allow-root.
# In a container, also make it reachable: make jupyter JUPYTER_ARGS="--ip=0.0.0.0 --no-browser"
jupyter: install $(VENV)/.extra-notebooks ## open the notebooks in JupyterLab
	$(CPU_ISA) $(BIN)/jupyter lab $(if $(filter 0,$(USER_ID)),--allow-root) $(JUPYTER_ARGS) notebooks/

bench: install $(VENV)/.extra-bench ## benchmarks against diffusers (the `bench` extra)
	$(BIN)/python benchmarks/bench_samplers.py
	$(BIN)/python benchmarks/bench_unet.py

gpu-check: install $(VENV)/.extra-bench ## on a lent GPU: UNet speed (eager, compiled), bf16 training + resume, DDIM-50 sampling
	$(BIN)/python benchmarks/gpu_check.py

clean:                 ## remove .venv and build files (keeps outputs/)
	rm -rf $(VENV) *.egg-info

clean-outputs:         ## remove outputs/ and everything in it (demo's and lab's results, and anything else there)
	rm -rf outputs
