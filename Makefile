# wcscan developer commands. `make demo` and `make test` are the front door.

VENV      := .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
WCSCAN    := $(VENV)/bin/wcscan
STAMP     := $(VENV)/.stamp
TORCH     := torch==2.13.0
# The CPU build of torch; pinned and installed first so that nothing pulls CUDA wheels.
LOCK      := requirements.lock
# Every other package at the version `make lock` resolved (pip freeze of a clean venv; see the README).
LOCKVENV  := .lock-venv

.PHONY: venv lock test demo bench clean

venv: $(STAMP)

# Rebuilt only when the virtualenv is missing or pyproject.toml or the lock is newer than
# the stamp. torch goes in first so that resolving the project's dependencies
# finds it satisfied and never pulls CUDA wheels; then the lock, exactly; then wcscan itself
# without resolving anything, and `pip check` fails if the lock lacks what pyproject.toml asks for.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install '$(TORCH)'
	$(PIP) install -r $(LOCK)
	$(PIP) install --no-deps -e '.[dev]'
	$(PIP) check
	@touch $(STAMP)

# A new lock from what a clean virtualenv resolves today for pyproject.toml (torch's CPU wheel first).
# torch's local label (+cpu) is dropped: `torch==X` is met by the CPU wheel installed first, and a
# label would name a wheel that PyPI does not serve. CUDA packages in the result are an error.
lock:
	rm -rf $(LOCKVENV)
	python3.11 -m venv $(LOCKVENV) || python3 -m venv $(LOCKVENV)
	$(LOCKVENV)/bin/python -m pip install --upgrade pip
	$(LOCKVENV)/bin/python -m pip install '$(TORCH)'
	$(LOCKVENV)/bin/python -m pip install -e '.[dev]'
	{ echo "# wcscan's whole dependency set, from 'make lock' (pip freeze of a clean Python 3.11 venv on Linux x86_64)."; \
	  echo "# Install: make venv (torch's CPU wheel first, then this file). Refresh: make lock, then make test."; \
	  $(LOCKVENV)/bin/python -m pip freeze --all --exclude-editable --exclude pip | sed -e 's/^torch==\([^+]*\)+.*/torch==\1/'; } > $(LOCK).tmp
	@if grep -iE '^(nvidia|cuda|triton)' $(LOCK).tmp; then echo "lock: CUDA packages resolved; is torch's CPU wheel first?" >&2; rm $(LOCK).tmp; exit 1; fi
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCKVENV)

# Two pytest processes (pytest-xdist), a test file per process at a time (module fixtures are built once):
# much of the suite waits on subprocesses, Ray and servers: on the 2-core host, 14 min 07 s against 18 min 00 s in one process.
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile

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
	rm -rf demo-out build dist *.egg-info .pytest_cache .hypothesis $(LOCKVENV)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
