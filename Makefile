# wcscan developer commands. `make demo` and `make test` are the front door.

VENV      := .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
WCSCAN    := $(VENV)/bin/wcscan
STAMP     := $(VENV)/.stamp
TORCH     := torch==2.13.0
# The CPU build of torch; pinned and installed first so that nothing pulls CUDA wheels.

.PHONY: venv test demo bench clean

venv: $(STAMP)

# Rebuilt only when the virtualenv is missing or pyproject.toml is newer than
# the stamp. torch goes in first so that resolving the project's dependencies
# finds it satisfied and never pulls CUDA wheels.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install '$(TORCH)'
	$(PIP) install -e '.[dev]'
	@touch $(STAMP)

test: venv
	$(PY) -m pytest -q

demo: venv
	rm -rf demo-out
	$(WCSCAN) run --config demo --out demo-out

# Every benchmark behind `wcscan bench` (resnet at a size a CPU finishes; the seed-study size needs a GPU).
bench: venv
	$(WCSCAN) bench generate --json
	$(WCSCAN) bench fit --json
	$(WCSCAN) bench images --json
	$(WCSCAN) bench scan --json
	$(WCSCAN) bench resnet --depth 10 --bins 16 --width 16 --batch 8 --steps 3 --json

clean:
	rm -rf demo-out build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
