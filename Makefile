# Two entry points for a fresh machine: `make demo` and `make test` (both install what they need).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kneeflow-installed
CORES ?= 2

.PHONY: install demo test lint clean-demo

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q -c constraints.txt --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/snakemake --configfile config/demo.yaml --cores $(CORES) --keep-going --rerun-incomplete

test: install
	$(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile rules/

clean-demo:
	rm -rf results/demo results/knee* results/tables results/logs results/benchmarks
