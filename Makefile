# The two commands: `make demo` and `make test`. Both build .venv from requirements.txt when it is missing
# or older than requirements.txt / pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m experiments.demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests

clean-venv:
	rm -rf $(VENV)
