# MultiTaskUNet: `make demo` runs the whole path on the built-in synthetic data,
# `make test` runs the test suite. Both set up what they need first (idempotent).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BUNDLE := monai_bundle
# re-install when requirements.txt changes
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
# root installs system packages directly; others through sudo when it is there
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
export PYTHONUNBUFFERED := 1

.PHONY: setup test-setup system-deps demo train evaluate infer test bench web verify clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# for the tests only: folders beside the venv, installed with pip --target and without dependencies (the rest
# comes from the venv), that the Slicer tests put first on PYTHONPATH in a subprocess: slicer-core 5.12 with
# its own VTK (the MRML tests run on two slicer-core releases) and pydicom 2.4.4, the one 3D Slicer 5.10
# ships (the worker under it); re-installed when their requirements file changes
SIDE_PACKAGES := slicer-core-5.12 pydicom-2.4
side_stamp = $(VENV)/$(1)/.installed-$(shell cat requirements-$(1).txt | cksum | cut -d' ' -f1)
SIDE_STAMPS := $(foreach s,$(SIDE_PACKAGES),$(call side_stamp,$(s)))

$(SIDE_STAMPS): | $(STAMP)
	rm -rf $(@D)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(@D) -r requirements-$(notdir $(@D)).txt
	touch $@

test-setup: setup $(SIDE_STAMPS)

# Debian packages the tests need: chromium drives the web demo's browser test (playwright never
# downloads a browser), cmake + a compiler configure the Slicer extension's CMake files, dicom3tools'
# dciodvfy validates the DICOM SEG and SR the inference writes, Orthanc with its DICOMweb plugin is the
# PACS the DICOMweb tests read studies from and push results to (started by the tests themselves)
SYSTEM_PACKAGES := chromium cmake g++ dicom3tools orthanc orthanc-dicomweb
ORTHANC_DICOMWEB := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
system-deps:
	@missing=""; for c in chromium cmake g++ dciodvfy Orthanc; do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	[ -f $(ORTHANC_DICOMWEB) ] || missing="$$missing orthanc-dicomweb"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES); fi

train: setup
	$(BIN)/python -m monai.bundle run training --config_file $(BUNDLE)/configs/train.json

evaluate: setup
	$(BIN)/python -m monai.bundle run evaluating --config_file "['$(BUNDLE)/configs/train.json','$(BUNDLE)/configs/evaluate.json']"

infer: setup
	$(BIN)/python -m monai.bundle run --config_file $(BUNDLE)/configs/inference.json

demo: setup
	$(BIN)/python $(BUNDLE)/scripts/demo.py

test: test-setup system-deps
	$(BIN)/python -m pytest Testing -q -p no:cacheprovider --timeout 900

bench: setup
	$(BIN)/python Testing/benchmarks/bench_training.py
	$(BIN)/python Testing/benchmarks/bench_inference.py

web: setup
	$(BIN)/python app.py

# the MONAI model-zoo checks of the bundle (offline, CPU), on models/model.pt when one has been trained;
# the 1 MB limit applies to committed files only: weights are produced, never committed
verify: setup
	$(BIN)/python Testing/bundle/model_zoo.py $(BUNDLE)

clean:
	rm -rf $(BUNDLE)/models $(BUNDLE)/eval $(BUNDLE)/data Testing/artifacts
