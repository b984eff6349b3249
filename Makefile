# The two commands: `make reproduce` runs the default study and leaves figures, tables and the
# report in results/; `make test` runs the test suite. Both set up .venv on first use.

PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= 2

.PHONY: setup reproduce report test clean

setup: $(STAMP)

# Rebuilt when the pins change; pip reads torch 2.14.1 / torchvision 0.29.1 like any other pin.
$(STAMP): requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

reproduce: $(STAMP)
	$(SNAKEMAKE) --profile workflow/profiles/local --cores $(CORES)
	$(MAKE) report

report: $(STAMP)
	$(SNAKEMAKE) --profile workflow/profiles/local --report results/report.html

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf results .snakemake
