# Two commands for a fresh clone:  `make demo` (the main job) and `make test` (the suite + notebooks).
# Both build .venv by themselves. TORCH picks the torch build: the CPU wheel by default; GPU users run
# e.g. `make demo TORCH=torch` (or `TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
NBENV   = OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONHASHSEED=0 MPLBACKEND=agg
NBVAL   = --nbval --sanitize-with notebooks/sanitize.cfg

.PHONY: install demo test test-fast notebooks jupyter bench lab clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[notebooks,test]"
	touch $@

demo: install          ## main job: exact-score Table 1, then train digits on CPU and sample
	$(BIN)/python -m ddimlab demo --out outputs/demo

lab: install           ## only the exact-score lab table and figure (seconds)
	$(BIN)/python -m ddimlab demo --out outputs/demo --skip-train

test: install          ## unit tests and every notebook under nbval
	$(NBENV) $(BIN)/pytest tests notebooks $(NBVAL) -p no:cacheprovider

test-fast: install
	$(BIN)/pytest tests -m "not slow" -p no:cacheprovider

notebooks: install     ## re-execute every notebook in place (then `make test` compares them)
	cd notebooks && for nb in [0-9][0-9]_*.ipynb; do \
	  echo "executing $$nb"; \
	  $(NBENV) ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=600 $$nb || exit 1; \
	done

jupyter: install       ## open the notebooks in JupyterLab
	$(BIN)/jupyter lab notebooks/

bench: install         ## benchmarks against diffusers (installed on demand)
	$(BIN)/pip install -q "diffusers>=0.30"
	$(BIN)/python benchmarks/bench_samplers.py
	$(BIN)/python benchmarks/bench_unet.py

clean:
	rm -rf $(VENV) outputs *.egg-info
