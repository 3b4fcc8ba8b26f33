# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
DATA    ?= data/spadim-toy
OUT     ?= runs/demo
ARCH    ?= wide_resnet50_2
WEIGHTS ?=
# Weight files placed beside the checkout (shared/weights) are found without flags.
export SPADIM_WEIGHTS ?= $(wildcard ../shared/weights)

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0          # CPU build; installed first so nothing pulls another torch
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Generates the embedded data set, then fits and evaluates SPADE and PaDiM on every class.
# Uses the ImageNet checkpoint found by `spadim weights` (or WEIGHTS=FILE); where none exists
# the demo says so and runs with explicitly requested random weights, flagged in every output.
demo: install
	$(BIN)/spadim make-data $(DATA)
	@if $(BIN)/spadim weights --arch $(ARCH) $(if $(WEIGHTS),--weights $(WEIGHTS)); then \
		W="$(if $(WEIGHTS),--weights $(WEIGHTS))"; \
	else \
		echo "!!! demo: no ImageNet checkpoint for $(ARCH); running with RANDOM weights (see README, Weights) !!!" >&2; \
		W="--weights random"; \
	fi; \
	$(BIN)/spadim evaluate $(DATA) --arch $(ARCH) $$W --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf $(VENV) runs data/spadim-toy
