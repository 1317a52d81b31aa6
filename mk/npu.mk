# The NPU judge environments (issue 10): Arm Vela (Ethos-U) and Rockchip rknn-toolkit2, each in its own venv.
# `make npu-env` builds both from nothing; the stamps make a rerun a no-op (a changed requirements file rebuilds).
# pixelfold is not installed into them: the judges run their workers with PYTHONPATH=src.
# Each starts with hard links to the packages .venv holds at the pinned versions (mk/seed_venv.py: torch's CUDA
# libraries once on disk, not three times), so .venv is built first.
NPU_PYTHON ?= python3
VELA_VENV  := .venv-vela
RKNN_VENV  := .venv-rknn
VELA_STAMP := $(VELA_VENV)/.installed
RKNN_STAMP := $(RKNN_VENV)/.installed
JUDGES_DIR := src/pixelfold/judges
NPU_PIP     = -m pip install -q --no-input

.PHONY: npu npu-full npu-suite npu-env npu-env-vela npu-env-rknn npu-test npu-survey npu-clean

# `make npu`: the judge environments, the judge tests, then the NPU suite (pixelfold.npu_suite) on every judged
# target for a CI subset of the zoo, into out/npu. `make npu-full` (or NPU_FULL=1) runs every zoo model and writes
# benchmarks/results/npu.md + npu.json. The suite exits non-zero when a rewritten model leaves one of pixelfold's
# operators on the CPU, a compiler crashes, or a rewrite fails: a crash is a failure, not a skip.
# The CI subset covers every kind of fix the targets need (Focus, stride-3 deconv (rk3588, U55), PixelShuffle,
# patchify and k7/s4 convs, a native-on-U55 deconv that must stay, a 1-D upsampler).
NPU_CI_MODELS ?= yolov5_focus fsrcnn_x3 espcn_x3 dcgan_generator upsampler_1d conv_k7s4 patchify_k8s8
ifeq ($(NPU_FULL),1)
NPU_OUT    ?= benchmarks/results
NPU_MODELS ?=
else
NPU_OUT    ?= out/npu
NPU_MODELS ?= $(NPU_CI_MODELS)
endif

npu: npu-env npu-test npu-suite

npu-full:
	$(MAKE) npu-suite NPU_FULL=1

npu-suite: npu-env $(STAMP)
	PYTHONPATH=src $(PY) -m pixelfold.npu_suite --out $(NPU_OUT) $(if $(strip $(NPU_MODELS)),--models $(NPU_MODELS))

npu-env: npu-env-vela npu-env-rknn

npu-env-vela: $(VELA_STAMP)
npu-env-rknn: $(RKNN_STAMP)

$(VELA_STAMP): $(JUDGES_DIR)/requirements-vela.txt $(JUDGES_DIR)/constraints-vela.txt | $(STAMP)
	rm -rf $(VELA_VENV)
	$(NPU_PYTHON) -m venv $(VELA_VENV)
	$(VELA_VENV)/bin/python $(NPU_PIP) --upgrade pip
	$(NPU_PYTHON) mk/seed_venv.py $(VENV) $(VELA_VENV) $(JUDGES_DIR)/constraints-vela.txt
	$(VELA_VENV)/bin/python $(NPU_PIP) -r $(JUDGES_DIR)/requirements-vela.txt -c $(JUDGES_DIR)/constraints-vela.txt
	$(VELA_VENV)/bin/vela --version
	touch $@

$(RKNN_STAMP): $(JUDGES_DIR)/requirements-rknn.txt $(JUDGES_DIR)/constraints-rknn.txt | $(STAMP)
	rm -rf $(RKNN_VENV)
	$(NPU_PYTHON) -m venv $(RKNN_VENV)
	$(RKNN_VENV)/bin/python $(NPU_PIP) --upgrade pip
	$(NPU_PYTHON) mk/seed_venv.py $(VENV) $(RKNN_VENV) $(JUDGES_DIR)/constraints-rknn.txt
	$(RKNN_VENV)/bin/python $(NPU_PIP) torch==2.14.1 -c $(JUDGES_DIR)/constraints-rknn.txt
	$(RKNN_VENV)/bin/python $(NPU_PIP) -r $(JUDGES_DIR)/requirements-rknn.txt -c $(JUDGES_DIR)/constraints-rknn.txt
	$(RKNN_VENV)/bin/python $(NPU_PIP) --no-deps rknn-toolkit2==2.5.0
	$(RKNN_VENV)/bin/python -c "from rknn.api import RKNN; RKNN(verbose=False).release()"
	touch $@

# The judge tests, including the end-to-end ones that need the environments (marked slow; they skip cleanly
# without the environments).
npu-test: npu-env $(STAMP)
	PYTHONPATH=src $(PY) -m pytest -q --run-slow tests/test_judges.py tests/test_tflite.py tests/test_zoo.py

# The measurements behind benchmarks/results/npu_forms.md (+ .json, SUPPORTED_OPS_vela.md).
npu-survey: npu-env $(STAMP)
	PYTHONPATH=src $(PY) -m pixelfold.judges.survey --out benchmarks/results

npu-clean:
	rm -rf $(VELA_VENV) $(RKNN_VENV)
