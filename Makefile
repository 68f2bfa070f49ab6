# Everything runs in a repo-local virtual environment; the only prerequisites are python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Torch goes in first and pinned, so a fresh machine takes the local CPU wheel instead of a CUDA build.
TORCH_SPEC ?= torch==2.13.0
DATA ?= $(if $(SENTENCE_VAE_DATA),$(SENTENCE_VAE_DATA),../shared/data)
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
WORDNET := /usr/share/wordnet/data.noun

.PHONY: install test test-all test-isa test-floor demo lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[all]"
	touch $@

test: install
	$(OFFLINE) $(BIN)/python -m pytest -q -m "not slow" tests

test-all: install
	$(OFFLINE) $(BIN)/python -m pytest -q tests

# The suite as on older x86 CPUs: torch's kernels, oneDNN, MKL, NumPy and its OpenBLAS capped to AVX2 (no AVX-512),
# then to SSE4 (no AVX). Their floats differ in the last bits from the full instruction set's; the tests compare with
# tolerances. A cap above what the CPU has changes nothing; MKL honours its cap on Intel CPUs only.
AVX2_CAP := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell \
	NPY_DISABLE_CPU_FEATURES="AVX512_ICL AVX512_SPR X86_V4"
SSE4_CAP := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 OPENBLAS_CORETYPE=Nehalem \
	NPY_DISABLE_CPU_FEATURES="AVX512_ICL AVX512_SPR X86_V4 X86_V3"
test-isa: install
	$(AVX2_CAP) $(OFFLINE) $(BIN)/python -m pytest -q -m "not slow" tests
	$(SSE4_CAP) $(OFFLINE) $(BIN)/python -m pytest -q -m "not slow" tests

# The suite at the bottom of the supported ranges (setup.py's floors of torch, transformers and the extras), in an
# environment of its own; torch 2.6.0 comes from the package index (a CUDA build, a few GB).
FLOOR_VENV := .venv-floor
FLOOR_SPEC ?= torch==2.6.0 transformers==5.18.0 accelerate==1.3.0 datasets==3.0.0 evaluate==0.4.0 \
	scikit-learn==1.4.2 sacrebleu==2.0.0 pytest==8.0.0
test-floor:
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install --quiet --disable-pip-version-check $(FLOOR_SPEC) -e ".[all]"
	$(OFFLINE) $(FLOOR_VENV)/bin/python -m pytest -q -m "not slow" tests

$(WORDNET):
	@echo "Installing the default demo corpus (Debian's wordnet-base: WordNet 3.0 example sentences)..."
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null

demo: install $(WORDNET)
	OMP_NUM_THREADS=1 $(OFFLINE) $(BIN)/python train_scripts/demo.py --output_dir runs/demo --num_threads 1

# Decoding is timed on a trained model when one exists (a fresh model decodes to max_length every time); the
# peer-design column needs the standard architecture (BENCHMARKS.md trains one at the peer's sizes). BENCH_REV adds
# the decoding of another revision's code (e.g. BENCH_REV=c3eab81) for the batch-1 comparison. The tables end with
# the targets and whether each is met.
BENCH_MODEL ?= runs/ptb/vae_standard/best
BENCH_REV ?=
bench: install
	$(OFFLINE) $(BIN)/python benchmarks/run_benchmarks.py --data_dir $(DATA) \
		$(if $(wildcard $(BENCH_MODEL)/config.json),--decode_model $(BENCH_MODEL)) \
		$(if $(BENCH_REV),--compare_rev $(BENCH_REV)) \
		--output benchmarks/results/speed_bench.json --markdown_output benchmarks/results/speed_bench.md

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(FLOOR_VENV) runs build *.egg-info
