# The two commands: `make reproduce` runs the default study and leaves figures, tables and the
# report in results/; `make test` runs the test suite. Both set up .venv on first use.

PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= 2

.PHONY: setup slurm-profile reproduce report test clean publish fetch

setup: $(STAMP) slurm-profile

# `snakemake --profile slurm` looks the name up in ~/.config/snakemake/: link this repository's
# profile there, unless the user already has a profile of that name of their own.
SLURM_PROFILE := $(HOME)/.config/snakemake/slurm
slurm-profile:
	@mkdir -p $(dir $(SLURM_PROFILE))
	@if [ ! -e $(SLURM_PROFILE) ] || [ -L $(SLURM_PROFILE) ]; then \
		ln -sfn $(CURDIR)/workflow/profiles/slurm $(SLURM_PROFILE) && echo "linked $(SLURM_PROFILE)"; \
	else echo "kept your own $(SLURM_PROFILE)"; fi

# Rebuilt when the pins change; pip reads torch 2.14.1 / torchvision 0.29.1 like any other pin.
# A C++ compiler lets torch compile the fused kernels (src/sparselab/fused.py) for the CPU; without
# one they run op by op, with the same results, several times slower.
$(STAMP): requirements.lock pyproject.toml
	command -v g++ >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends g++; } || \
		echo "note: no C++ compiler (g++): fused kernels will run op by op"
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

# Sharing results through DVC's default remote (.dvc/config; README, "Sharing results with DVC").
# publish: `dvc repro` brings the outputs up to date with params.yaml (its stage runs Snakemake,
# which reruns only what is missing or stale, often nothing) and records them in dvc.lock; `dvc
# push` uploads them. Commit and push dvc.lock afterwards, so that others get the matching lock.
# fetch: `dvc pull` the outputs of the checked-out dvc.lock; then, only if params.yaml and the code
# are those dvc.lock records, `snakemake --touch --forceall` marks every job up to date and records
# its metadata (without --forceall, jobs whose pulled outputs happen to be newer than their inputs
# get no metadata, and a later edit of their params would not rerun them).
DVC := $(VENV)/bin/dvc
DVC_STAGE_PATH := PATH="$(abspath $(VENV))/bin:$$PATH"

publish: $(STAMP)
	$(DVC_STAGE_PATH) $(DVC) repro workflow
	$(DVC) push
	@echo "Published. Now commit and push dvc.lock: git add dvc.lock && git commit && git push"

fetch: $(STAMP)
	$(DVC) pull
	@$(DVC) status --quiet workflow || { $(DVC) status workflow; echo "error: params.yaml or the code differ from what dvc.lock records, so the pulled outputs are not theirs: check out the commit that published them (git checkout -- params.yaml), or run the workflow"; exit 1; }
	$(SNAKEMAKE) --profile workflow/profiles/local --touch --forceall --quiet
