# The two commands a newcomer needs: `make demo` and `make test` (both install first if needed).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_AUTH_MODE := disabled

.PHONY: install demo test test-fast bench clean

install:
	bash scripts/install.sh

demo: install
	$(PY) -m afmrl.cli doctor --config configs/demo.yaml
	$(PY) -m afmrl.cli pipeline --config configs/demo.yaml

test: install
	$(PY) -m pytest -q -rs --durations=40 tests

test-fast: install
	$(PY) -m pytest -q -rs tests -m "not slow"

bench: install
	$(PY) bench/bench_index.py --n 1000000
	$(PY) bench/bench_evaluator.py --n 1000000 --batches 16,64,256 --kind ivf_flat
	$(PY) bench/bench_extract.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_serve.py --seconds 8

clean:
	rm -rf runs .pytest_cache
