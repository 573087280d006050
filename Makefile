# dimsebus: `make demo` runs the product, `make test` runs every check. Both set up first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system test faults faults-private cluster-up cluster-down demo bench soak schemas \
	screenshots clean

setup: $(VENV)/.installed

# Exactly the versions of requirements.lock (scripts/lock regenerates it), then dimsebus
# itself, editable, built by the locked setuptools: nothing is resolved afresh.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# dcmtk (the real DICOM peers of the tests) and a running RabbitMQ.
system:
	scripts/setup-system

# The integration tests and the fault scenarios that leave the broker alone run on two
# workers, each in a vhost of its own, a file's tests on one worker, the longest files first
# (tests/conftest.py); the tests marked
# exclusive stop, kill and fill the broker: alone, after. Both runs write one Reliability
# table (var/faults-report.md; tests/faults/report.py).
test: check system
	export DIMSEBUS_FAULTS_RUN=$$(date +%s%N); \
	$(BIN)/pytest tests/integration tests/faults -n 2 --dist loadfile --no-loadscope-reorder \
	  -m "not exclusive" \
	&& $(BIN)/pytest -m exclusive

# The quick check, in under a minute: lint, format, types, import contracts and the unit
# tests (no broker, no dcmtk), on two workers.
.PHONY: check contracts
check: setup contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest tests/unit -q -n 2

# The import contracts (issue 20, item 3, .importlinter): pure cores import no I/O, services
# do not import each other, schemas only pydantic and the standard library, no cycles.
contracts: setup
	$(BIN)/lint-imports --no-cache

# Only the fault scenarios (tests/faults; `make test` runs them too): they stop, kill and
# fill the local RabbitMQ on purpose, and print the Reliability table.
faults: setup system
	$(BIN)/pytest tests/faults

# The same scenarios (and the one integration test marked faults) on a private RabbitMQ node
# of scripts/cluster (dimsebus-1@localhost on 5681), stopped afterwards: the broker on 5672,
# which others may be using, is never touched.
faults-private: setup system
	scripts/cluster up 1
	scripts/cluster run -- $(BIN)/pytest -m faults; status=$$?; scripts/cluster down; exit $$status

# A cluster of private RabbitMQ nodes beside the broker on 5672 (scripts/cluster): three
# unless N says otherwise; cluster-down stops them all and removes their data.
cluster-up:
	scripts/cluster up $(or $(N),3)

cluster-down:
	scripts/cluster down

demo: setup system
	$(BIN)/dimsebus demo

bench: setup system
	$(BIN)/python -m bench.bus

soak: setup system
	$(BIN)/python -m bench.soak

schemas: setup
	$(BIN)/dimsebus schemas export schemas/json

# The README's screenshots of the web page (docs/*.png), taken by its browser test; the test
# otherwise writes them to its own temporary folder.
screenshots: setup system
	DIMSEBUS_SCREENSHOTS=docs $(BIN)/pytest tests/integration/test_web_browser.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
