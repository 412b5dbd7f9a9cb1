# The two commands of the README. Both set up what they need first (scripts/setup.sh).
PY := $(if $(or $(VIRTUAL_ENV),$(CONDA_PREFIX)),python,.venv/bin/python)
SPEC ?= manifests/demo.yaml
OUT ?=
NUM_CPUS ?=

.PHONY: setup demo test lint bench

setup:
	@scripts/setup.sh dev

demo: setup
	$(PY) -m pipelines.build --spec $(SPEC) $(if $(OUT),--output $(OUT)) $(if $(NUM_CPUS),--num-cpus $(NUM_CPUS))

lint: setup
	$(PY) -m ruff check .

test: setup
	@scripts/setup.sh dev,labelers,train
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

bench: setup
	$(PY) -m benchmarks.bench_build
