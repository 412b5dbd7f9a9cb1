# The commands of the README. Each sets up what it needs first (scripts/setup.sh).
PY := $(if $(or $(VIRTUAL_ENV),$(CONDA_PREFIX)),python,.venv/bin/python)
SPEC ?= manifests/demo.yaml
OUT ?=
NUM_CPUS ?=

.PHONY: setup demo pipeline test test-fast lint bench

setup:
	@scripts/setup.sh dev

demo: setup
	$(PY) -m pipelines.build --spec $(SPEC) $(if $(OUT),--output $(OUT)) $(if $(NUM_CPUS),--num-cpus $(NUM_CPUS))

# From zero to a prediction (README): every stage on a small build, into out/pipeline (or OUT=DIR).
pipeline: setup
	@scripts/setup.sh dev,train
	$(if $(or $(VIRTUAL_ENV),$(CONDA_PREFIX)),,. .venv/bin/activate && )scripts/pipeline.sh $(or $(OUT),out/pipeline)

lint: setup
	$(PY) -m ruff check .

# The report's browser tests need Chromium, a system package: installed only under CI=true or
# with WITH_BROWSER=1 (scripts/install_browser.sh); otherwise those tests skip and say so.
YES := 1 true TRUE True yes
test: setup
	@scripts/setup.sh dev,labelers,train
	$(if $(filter $(YES),$(CI) $(WITH_BROWSER)),@scripts/install_browser.sh)
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

# The suite without the tests marked slow (builds, training, subprocesses): a few minutes, for
# the edit-test loop. `make test` (and CI) runs everything.
test-fast: setup
	@scripts/setup.sh dev,labelers,train
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks.bench_build
