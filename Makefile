# Two entry points for a fresh machine: `make demo` and `make test` (both install what they need).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kneeflow-installed
CORES ?= 2
# the suite CI runs; `make test-heavy` adds the large-network exports
PYTEST_ARGS ?= -m "not heavy"

.PHONY: install demo test test-heavy lint clean-demo gpu-bundle

# --no-cache-dir: torch's CUDA wheels (several GB from PyPI) would otherwise sit twice on disk, in
# pip's cache and in the venv; a CI machine once ran out of space there
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-cache-dir -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q -c constraints.txt --no-deps -e .
	touch $(STAMP)

# pymskt's reference knee for femoral cartilage subregions: inside the mskt sdist on PyPI (pymskt
# itself would download it from GitHub at run time)
REF := .cache/pymskt_data/right_knee_example.nrrd
$(REF): | $(STAMP)
	mkdir -p .cache/mskt $(dir $(REF))
	$(PY) -m pip download -q --no-deps --no-build-isolation --no-binary :all: mskt==0.1.22 -d .cache/mskt
	tar -xzf .cache/mskt/mskt-0.1.22.tar.gz -C .cache/mskt mskt-0.1.22/data/right_knee_example.nrrd
	mv .cache/mskt/mskt-0.1.22/data/right_knee_example.nrrd $(REF)

install: $(STAMP) $(REF)

demo: install
	$(VENV)/bin/snakemake --configfile config/demo.yaml --cores $(CORES) --keep-going --rerun-incomplete
	$(VENV)/bin/snakemake --configfile config/demo.yaml --report results/report.html

test: install
	$(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

# exports of the large registry networks (MedNeXt B/M/L, TotalSegmentator-style): ~15 min
test-heavy: install
	$(VENV)/bin/python -m pytest -q -ra -m heavy tests/test_export.py

lint: install
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile rules/

clean-demo:
	rm -rf results/demo results/knee* results/tables results/logs results/benchmarks

# what benchmarks/gpu.sh needs on the lent GPU machine (Python 3.12 there): monai's wheel and the
# synthetic knee the training-step benchmark reads
gpu-bundle: install
	mkdir -p .cache/gpu
	$(PY) -m pip download -q --no-deps --only-binary :all: --python-version 3.12 -d .cache/gpu \
		monai==$$($(PY) -c 'import monai; print(monai.__version__)')
	$(PY) -c "import sys; sys.path.insert(0, 'benchmarks'); import train_step; from pathlib import Path; \
		train_step.knee(Path('.cache/gpu'))"
