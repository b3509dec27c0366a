# pytest-kvm: the two quick-start commands are `make demo` and `make test`.
VENV   := .venv
PYTEST := $(VENV)/bin/python -m pytest
HOSTS  ?= hosts.ini

.PHONY: setup setup-report demo test bench lint image image-mkosi report report-check clean

# Installs what is missing (apt packages incl. QEMU 10 from bookworm-backports, the venv).
setup:
	@bash scripts/setup.sh

# setup, plus what rendering and checking the Allure report needs (Chromium; Java, npm).
setup-report:
	@bash scripts/setup.sh --with-report

# Runs the KVM suites on the default inventory (the local machine); ARGS="-n 2 --dist loadgroup"
# for xdist.
demo: setup
	$(PYTEST) suites/ --hosts $(HOSTS) $(ARGS)

# The project's own tests (real sshd hosts, real QEMU, real guests, a rendered report).
test: setup-report
	$(PYTEST) tests/ --durations=20

# A bootable Debian cloud image (GPT, GRUB for BIOS and UEFI, cloud-init, qemu-guest-agent,
# sshd), cached; RELEASE=trixie for Debian 13 (default bookworm); OUT=path to copy it somewhere.
image: setup
	$(VENV)/bin/python -m pytest_kvm image build $(if $(RELEASE),--release $(RELEASE)) $(if $(OUT),--out $(OUT))

# The tests' Debian image built by mkosi (tests/images/mkosi.conf), cached; prints its path.
image-mkosi: setup-report
	$(VENV)/bin/python tests/foreign.py

bench: setup
	$(VENV)/bin/python bench/run.py

# Renders reports/allure-results (written by every run with an inventory) to HTML, keeping the
# previous report's history for trends. Needs Java and npx (Allure's command line from npm).
report: setup-report
	@test -d reports/allure-results || { echo "no reports/allure-results: run make demo first"; exit 1; }
	@if [ -d reports/allure-report/history ]; then \
	  mkdir -p reports/allure-results/history && cp -r reports/allure-report/history/. reports/allure-results/history/; fi
	npx --yes allure-commandline generate reports/allure-results -o reports/allure-report --clean
	@echo "open reports/allure-report/index.html"

# The rendered report in headless Chromium: the overview shows the results' counts; a
# screenshot of it goes to reports/allure-overview.png.
report-check: report
	$(VENV)/bin/python scripts/check_report.py reports/allure-results reports/allure-report \
	  reports/allure-overview.png

lint: setup
	$(VENV)/bin/ruff check .
	shellcheck -s sh pytest_kvm/remote/*.sh pytest_kvm/guest/*.sh

clean:
	rm -rf $(VENV) reports/allure-results reports/allure-report reports/allure-overview.png reports/bench.json \
	  reports/bench-lab.log reports/junit.xml reports/demo.log
