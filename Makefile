# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BIND ?= 127.0.0.1:8000
ROOM ?= lobby

.PHONY: run test check suite lock lint typecheck system-deps bench bench-quick settings clean chaos chaos-short \
	container-deps container-images test-containers test-plain-asgi

# Versions of the installers themselves; everything else comes from requirements/*.lock.
PIP_VERSION ?= 26.3
UV_VERSION ?= 0.13.9
LOCKED_INSTALL = $(BIN)/python -m pip install -q --require-hashes --no-deps -r

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'pip==$(PIP_VERSION)'

# Runtime install (what `make run` needs): the locked versions, then roomchat itself. `pip
# check` fails if the lock no longer covers what pyproject.toml asks for (run `make lock`).
$(VENV)/.run-installed: requirements/run.lock pyproject.toml | $(BIN)/python
	$(LOCKED_INSTALL) requirements/run.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# Everything the tests, linters and benchmarks need (requirements/dev.lock).
$(VENV)/.dev-installed: requirements/dev.lock pyproject.toml | $(BIN)/python
	$(LOCKED_INSTALL) requirements/dev.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@ $(VENV)/.run-installed

# Regenerate both lock files from pyproject.toml's ranges (newest versions that fit). A change
# of its own: commit the new locks only with a `make test` that passed on them.
LOCK = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -q
lock: | $(BIN)/python
	$(BIN)/python -m pip install -q 'uv==$(UV_VERSION)'
	$(LOCK) --extra fast --extra redis --extra client --extra s3 --extra postgres --group dev \
		-o requirements/dev.lock
	$(LOCK) --extra fast --group build -o requirements/run.lock

# `make run BIND=127.0.0.1:9000 ROOM=team`: another address or first room. The check comes first,
# so a taken port (or any other start-up mistake) is the one line you see, not after a link.
run: $(VENV)/.run-installed
	@$(BIN)/roomchat serve --bind $(BIND) --check >/dev/null
	@link=$$($(BIN)/roomchat token --user demo --name "Demo User" --room $(ROOM) --ttl 12h \
		--link http://$(BIND)) && echo && \
	echo "roomchat: open this link to join room '$(ROOM)' as the demo user (valid 12 h):" && \
	echo && echo "$$link" && echo
	@echo "More users: $(BIN)/roomchat token --user bob --room $(ROOM) --link http://$(BIND)"
	@echo
	exec $(BIN)/roomchat serve --bind $(BIND)

system-deps:
	scripts/install-system-deps.sh

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

# Bytecode is cached (__pycache__, ignored by git) even where the environment sets
# PYTHONDONTWRITEBYTECODE: without it every pytest process rewrote the asserts of every test
# module it collected (~8 s of CPU per process for the whole tree) and every `roomchat` process
# a test starts compiled the gateway again.
unexport PYTHONDONTWRITEBYTECODE

# The developer's loop after each edit: lint, types and the unit tier on two workers, collected
# from its folders only (the others import Playwright and Hypothesis), well under a minute.
UNIT_TESTS := tests/rooms tests/gateway tests/files
check: lint typecheck $(VENV)/.dev-installed system-deps
	$(BIN)/pytest -q -n 2 -m unit $(UNIT_TESTS)

# Every tier of the suite on TEST_WORKERS processes (pytest-xdist): most tests wait on sockets
# and browsers rather than compute, so 3 workers on 2 cores take about half the time of one.
# TEST_WORKERS=0 runs them in this process. `--dist worksteal`: an idle worker takes half of
# the busiest one's queue (xdist's default hands out long runs of consecutive tests, and the
# e2e folder fitted in one worker's first share: it ran alone for the last 3 minutes).
# `--plain-asgi-too` runs the protocol and integration suites a second time in the same
# session on Hypercorn's plain ASGI path (what `make test-plain-asgi` runs alone).
# The chaos suite's short form runs after, alone: its scenarios compare latencies between
# phases of one run, and a browser test starting on another worker during one phase only
# would decide the comparison (the slow-consumer p99 failed 3 runs in a row that way, with
# baselines of 3-7 ms).
TEST_WORKERS ?= 3
suite: $(VENV)/.dev-installed system-deps
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal --plain-asgi-too --ignore=tests/chaos
	$(BIN)/pytest tests/chaos

test: lint typecheck suite

# The fault suite (tests/chaos, docs/reliability.md). `make test` already runs its short form
# (plain pytest collects it: ~2 minutes, a 30 s soak); `make chaos` runs the long one (more
# traffic and examples, a 5-minute soak). ROOMCHAT_CHAOS_SEED=<n> replays a run's randomness.
chaos: $(VENV)/.dev-installed system-deps
	ROOMCHAT_CHAOS_FULL=1 ROOMCHAT_CHAOS_SECONDS=$${ROOMCHAT_CHAOS_SECONDS:-300} \
		$(BIN)/pytest tests/chaos -s -ra

chaos-short: $(VENV)/.dev-installed system-deps
	$(BIN)/pytest tests/chaos -s -ra

# The WebSocket protocol and integration suites on Hypercorn's plain ASGI path: no part of
# gateway/hypercorn_ext installed (ROOMCHAT_FAST_PATHS=0), as after a library upgrade that
# changes what they reach into. Tests of what the fast paths themselves do (marked fast_paths)
# are left out. `make test` runs these in its main session too (--plain-asgi-too).
test-plain-asgi: $(VENV)/.dev-installed system-deps
	$(BIN)/pytest -n $(TEST_WORKERS) --plain-asgi-only tests

# Containers for real (podman, no image registry needed): installs podman/runc/debootstrap
# with apt if missing, builds the images (base images cached in podman's store), then tests
# the image and the compose deployment. See docs/production.md, "Containers".
PODMAN_COMPOSE_VERSION ?= 1.6.0

$(VENV)/.containers-installed: $(VENV)/.dev-installed
	$(BIN)/python -m pip install -q 'podman-compose==$(PODMAN_COMPOSE_VERSION)'
	touch $@

container-deps:
	scripts/install-container-deps.sh

container-images: $(VENV)/.dev-installed container-deps
	PYTHON=$(BIN)/python scripts/build-container-images.sh

test-containers: $(VENV)/.containers-installed container-images
	ROOMCHAT_TEST_CONTAINERS=1 $(BIN)/pytest -s \
		tests/infra/test_container_image.py tests/infra/test_compose.py

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.run

bench-quick: $(VENV)/.dev-installed
	$(BIN)/python -m bench.run --quick

settings: $(VENV)/.run-installed
	$(BIN)/roomchat settings

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache test-artefacts dist build
