# Set-up from nothing: `make demo` and `make test` each create .venv, install, and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The test environment pins torch/torchvision (found on local disk); the library itself asks for torch>=2.4.
PINS   := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test sweep fuzz bench bench-quick clean

$(STAMP): pyproject.toml requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PINS) -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p out
	$(PY) -m pixelfold explain --plot out/seed.png

test: $(STAMP)
	$(PY) -m pytest -q -n 2

sweep: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_model_sweep.py tests/test_readme.py --run-slow

fuzz: $(STAMP)
	$(PY) -m pixelfold.fuzz --n $(or $(N),1000)

bench: $(STAMP)
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 $(PY) -m pixelfold bench --out benchmarks/results

bench-quick: $(STAMP)
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 $(PY) -m pixelfold bench --quick --out out/bench

clean:
	rm -rf $(VENV) out build *.egg-info src/*.egg-info .hypothesis

include mk/npu.mk
