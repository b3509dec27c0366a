# pytest-kvm: the two quick-start commands are `make demo` and `make test`.
VENV   := .venv
PYTEST := $(VENV)/bin/python -m pytest
HOSTS  ?= hosts.ini

.PHONY: setup demo test bench lint clean

# Installs what is missing (apt packages incl. QEMU 10 from bookworm-backports, the venv).
setup:
	@bash scripts/setup.sh

# Runs the KVM suites on the default inventory (the local machine).
demo: setup
	$(PYTEST) suites/ --hosts $(HOSTS)

# The project's own tests (real sshd hosts, real QEMU, real guests).
test: setup
	$(PYTEST) tests/

bench: setup
	$(VENV)/bin/python bench/run.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) reports/allure-results reports/bench.json
