# dimsebus: `make demo` runs the product, `make test` runs every check. Both set up first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system test demo bench schemas clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# dcmtk (the real DICOM peers of the tests) and a running RabbitMQ.
system:
	scripts/setup-system

test: setup system
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

demo: setup system
	$(BIN)/dimsebus demo

bench: setup system
	$(BIN)/python -m bench.bus

schemas: setup
	$(BIN)/dimsebus schemas export schemas/json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
