# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
TOY      = data/spadim-toy
# Real MVTec AD images beside the checkout (../shared) when present, else the generated embedded set.
DATA    ?= $(or $(wildcard ../shared/data/mvtec_ad_subset),$(TOY))
OUT     ?= runs/demo
ARCH    ?=
WEIGHTS ?=
# Weight files placed beside the checkout (shared/weights) are found without flags.
export SPADIM_WEIGHTS ?= $(wildcard ../shared/weights)

.PHONY: install browser demo reproduce test bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0          # CPU build; installed first so nothing pulls another torch
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The backbone: ARCH if given, else the first of wide_resnet50_2 and resnet50_caffe whose ImageNet
# weights are found (or download); only where neither exists: random weights, flagged everywhere.
PICK = W="$(if $(WEIGHTS),--weights $(WEIGHTS))"; A="$(ARCH)"; \
	if [ -z "$$A" ]; then A=$$($(BIN)/spadim weights --first wide_resnet50_2,resnet50_caffe $$W 2>/dev/null); fi; \
	if [ -z "$$A" ]; then \
		echo "!!! no ImageNet checkpoint found; running with RANDOM weights (see README, Weights) !!!" >&2; \
		A=wide_resnet50_2; W="--weights random"; \
	fi

# Fits and evaluates SPADE, PaDiM and PatchCore on every class of DATA with fit's defaults (whole frame,
# --layers auto, calibrated decisions).
demo: install
	@if [ "$(DATA)" = "$(TOY)" ]; then $(BIN)/spadim make-data $(TOY); fi
	@$(PICK); \
	echo "demo: spadim evaluate $(DATA) --arch $$A $$W --out $(OUT)" >&2; \
	$(BIN)/spadim evaluate $(DATA) --arch $$A $$W --out $(OUT)

# The study in one run (Table 1, proposals 1 and 2, report.html) for SPADE, PaDiM and PatchCore, with
# the --layers auto choice recorded beside Table 1; resumable.
reproduce: install
	@if [ "$(DATA)" = "$(TOY)" ]; then $(BIN)/spadim make-data $(TOY); fi
	@$(PICK); \
	$(BIN)/spadim reproduce $(DATA) --methods spade,padim,patchcore --layers auto --arch $$A $$W --out runs/reproduce

# The page's browser test drives Debian's chromium and chromedriver (never a browser that downloads
# itself); installed here when missing, as root or through sudo.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; }

test: install browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs data/spadim-toy
