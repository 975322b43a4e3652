# alphagrad-rl. `make install` builds .venv (torch first, pinned), `make test` runs the test suite.
PYTHON ?= python3.11
VENV ?= .venv
# A GPU user overrides this, e.g. `make install TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint bench-optimizers clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# optimizer.step() time and state bytes: AlphaGrad vs Adam vs SGD (issue 2, section 6)
bench-optimizers: $(STAMP)
	$(BIN)/python scripts/bench_optimizers.py

clean:
	rm -rf $(VENV) .pytest_cache
