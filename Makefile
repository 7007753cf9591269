# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BIND ?= 127.0.0.1:8000
ROOM ?= lobby

.PHONY: run test lint typecheck unit system-deps bench bench-quick settings clean chaos chaos-short \
	container-deps container-images test-containers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Runtime install (what `make run` needs).
$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[fast]'
	touch $@

# Everything the tests, linters and benchmarks need.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run-installed

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

unit: $(VENV)/.dev-installed system-deps
	$(BIN)/pytest

test: lint typecheck unit

# The fault suite (tests/chaos, docs/reliability.md). `make test` already runs its short form
# (plain pytest collects it: ~2 minutes, a 30 s soak); `make chaos` runs the long one (more
# traffic and examples, a 5-minute soak). ROOMCHAT_CHAOS_SEED=<n> replays a run's randomness.
chaos: $(VENV)/.dev-installed system-deps
	ROOMCHAT_CHAOS_FULL=1 ROOMCHAT_CHAOS_SECONDS=$${ROOMCHAT_CHAOS_SECONDS:-300} \
		$(BIN)/pytest tests/chaos -s -ra

chaos-short: $(VENV)/.dev-installed system-deps
	$(BIN)/pytest tests/chaos -s -ra

# Containers for real (podman, no image registry needed): installs podman/runc/debootstrap
# with apt if missing, builds the images (base images cached in podman's store), then tests
# the image and the compose deployment. See README, "Containers".
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
