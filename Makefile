# Set-up and everyday commands. `make demo` and `make test` create .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/data

.PHONY: demo test test-all demo-model experiments experiments-quick bench clean help

help:
	@echo "make demo        install kconvert (no TensorFlow), convert the bundled model, run it on sample texts"
	@echo "make test        install the test extras (TensorFlow included) and run the test suite"
	@echo "make test-all    the test suite including slow end-to-end checks"
	@echo "make demo-model  retrain the bundled demo model (needs the test extras and $(DATA))"
	@echo "make experiments the CNN / RNN / LSTM experiment specs on full data into results/ (hours)"
	@echo "make experiments-quick   the same on small subsets (minutes)"
	@echo "make bench       benchmarks vs Keras and ONNX Runtime into bench-results/ (~10 min; THREADS=n)"

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("kconvert needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.base
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.base
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/kconvert examples/models/sentiment.keras -o build/demo/sentiment --force \
		--labels negative,neutral,positive
	$(BIN)/krun build/demo/sentiment examples/samples/sentences_id.txt
	$(BIN)/krun build/demo/sentiment --text "Saya sangat kecewa dengan pelayanan hotel ini."

# One pytest worker per core (at most 4: each holds a TensorFlow); TensorFlow's tracing is single-threaded
# Python, so two workers on 2 cores halve the wall time (10m55s -> 5m54s measured).
PYTEST := $(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal

test: $(VENV)/.test
	$(PYTEST)

test-all: $(VENV)/.test
	$(PYTEST) -m ""

demo-model: $(VENV)/.test
	$(BIN)/kexperiment train examples/demo/sentiment.toml -o examples/models/sentiment.keras --data-dir $(DATA)

experiments: $(VENV)/.test
	$(BIN)/kexperiment all -o results --data-dir $(DATA)

experiments-quick: $(VENV)/.test
	$(BIN)/kexperiment all -o results-quick --quick --data-dir $(DATA)

THREADS ?= $(shell nproc 2>/dev/null || echo 2)
bench: $(VENV)/.bench
	$(BIN)/python benchmarks/bench.py -o bench-results --threads $(THREADS)

clean:
	rm -rf $(VENV) build .pytest_cache
