# Taskbeam: `make up` runs the stack, `make test` runs the tests. `make help` lists all.
# HA=1: Redis high availability (redis/ha.yml), for every target that runs Compose;
# HA=tls: the same over TLS (redis/ha-tls.yml; `make certs` first, or your own REDIS_TLS_DIR).
COMPOSE ?= docker compose$(if $(filter 1 tls,$(HA)), -f docker-compose.yml -f redis/ha.yml)$(if $(filter tls,$(HA)), -f redis/ha-tls.yml)
N ?= 1
HTTP_PORT ?= $(shell sed -n 's/^HTTP_PORT=//p' .env 2>/dev/null | tail -n1)

.DEFAULT_GOAL := help
.PHONY: help env up down logs ps scale test unit lint docs bench bench-export bench-heartbeat soak certs
.PHONY: swarm-up swarm-down swarm-test

help: ## Show the targets and what they do
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Written by .ci/provision.sh on a host without a registry: the stand-in base images.
OFFLINE_IMAGES ?= /var/cache/taskbeam-provision/images.env

env: ## Create .env from .env.example with fresh random secrets (kept if it exists)
	@if [ ! -f .env ]; then \
	  sed -e "s/^SECRET_KEY=.*/SECRET_KEY=$$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')/" \
	      -e "s/^REDIS_PASSWORD=.*/REDIS_PASSWORD=$$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')/" \
	      -e "s/^REDIS_WEB_PASSWORD=.*/REDIS_WEB_PASSWORD=$$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')/" \
	      -e "s/^REDIS_WORKER_PASSWORD=.*/REDIS_WORKER_PASSWORD=$$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')/" \
	      -e "s/^REDIS_FLOWER_PASSWORD=.*/REDIS_FLOWER_PASSWORD=$$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')/" \
	      -e "s/^REDIS_SENTINEL_PASSWORD=.*/REDIS_SENTINEL_PASSWORD=$$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')/" \
	      -e "s/^FLOWER_PASSWORD=.*/FLOWER_PASSWORD=$$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')/" \
	      -e "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')/" \
	      -e "s/^POSTGRES_EXPORT_PASSWORD=.*/POSTGRES_EXPORT_PASSWORD=$$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')/" \
	      .env.example > .env && chmod 600 .env && echo "Created .env with fresh secrets"; \
	  if [ -s "$(OFFLINE_IMAGES)" ]; then \
	    grep -v -E '^(PYTHON|REDIS|NGINX|POSTGRES|PROMETHEUS)_IMAGE=' .env > .env.tmp && cat "$(OFFLINE_IMAGES)" >> .env.tmp \
	      && mv .env.tmp .env && echo "Using the offline base images of $(OFFLINE_IMAGES)"; \
	  fi; \
	fi

up: env ## Build and start the stack (HA=1: Redis with replicas and Sentinels), wait until healthy
	$(COMPOSE) up -d --build --wait
	@echo "Taskbeam is up: http://localhost:$(or $(HTTP_PORT),8080)"

down: ## Stop the stack (keeps the Redis volume; add -v by hand to drop it)
	$(COMPOSE) down

logs: ## Follow the logs of every service
	$(COMPOSE) logs -f --tail=100

ps: ## Show the services and their health
	$(COMPOSE) ps

scale: env ## Run N worker replicas, e.g. `make scale N=3`
	$(COMPOSE) up -d --wait --scale worker=$(N)

unit: ## Run lint, the docs build and the unit tests only (no Docker needed)
	tests/run.sh unit

test: ## Run lint, unit tests, then integration tests on a throwaway stack (own project and port)
	tests/run.sh

# Rules: [tool.ruff] and [tool.mypy] in pyproject.toml; both pinned in the test extras.
lint: ## Check style and types: ruff check, ruff format --check (with examples/, jobs/, bench/), mypy
	@tests/run.sh venv
	.venv/bin/ruff check taskbeam tests web examples jobs bench
	.venv/bin/ruff format --check taskbeam tests web examples jobs bench
	.venv/bin/mypy

# The site's pages are docs/ and its nav mkdocs.yml; tests/run.sh builds it with --strict.
docs: ## Serve the documentation site at http://127.0.0.1:8000 (mkdocs serve; edits reload)
	@tests/run.sh venv
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs serve

# The load tools are one client address with thousands of sockets: while they run,
# Nginx's per-address limits are lifted (and put back from .env afterwards).
LOAD_LIMITS = WS_CONNECTIONS_PER_IP=20000 CREATES_PER_MINUTE_PER_IP=60000 CREATE_BURST_PER_IP=10000

# BENCH_CLIENT=tuned|stock|both: our tuned client, a plain `websockets` client fed by a
# stock emitter (the fan-in only), or both (bench/bench.py).
BENCH_CLIENT ?= both
# WEB_SCALING="1 2 3": also web CPU per event with that many web replicas, and the
# marginal CPU per event between a quarter of the rate and the rate (bench.py).
WEB_SCALING ?=
# TIMELINE=RATE: instead, one stock-client step held at RATE, per 100 ms next to CPU,
# GC, health checks and listener reads: results/timeline-$(TIMELINE_LABEL).json/.png.
TIMELINE ?=
TIMELINE_LABEL ?= run
BENCH_ARGS = $(if $(TIMELINE),--timeline $(TIMELINE) --label $(TIMELINE_LABEL),--client $(BENCH_CLIENT) $(if $(WEB_SCALING),--web-scaling $(WEB_SCALING)))

# The reconnect storm, last (it restarts web and kills its worker): STORM_CLIENTS clients
# subscribed to running tasks, back after each fault (bench/storm.py).
STORM_CLIENTS ?= 10000
STORM = .venv/bin/python bench/storm.py --clients $(STORM_CLIENTS)

bench: ## Benchmark the running stack (after `make up`): table, JSON and PNG in bench/results/
	@tests/run.sh venv
	$(LOAD_LIMITS) $(COMPOSE) up -d --no-deps --wait nginx
	.venv/bin/python bench/bench.py $(BENCH_ARGS); status=$$?; \
	  $(if $(TIMELINE),,if [ $$status = 0 ]; then $(STORM); status=$$?; fi;) \
	  $(COMPOSE) up -d --no-deps --wait nginx; exit $$status
	$(if $(TIMELINE),@true,$(COMPOSE) exec -T worker python - < bench/persist_overhead.py > bench/results/persist.json)
	$(if $(TIMELINE),@true,@cat bench/results/persist.json)
	$(if $(TIMELINE),@true,$(COMPOSE) exec -T worker python - < bench/rollup_cost.py > bench/results/rollup.json)
	$(if $(TIMELINE),@true,@cat bench/results/rollup.json)
	$(if $(TIMELINE),@true,$(COMPOSE) exec -T worker python - < bench/tracing_cost.py > bench/results/tracing.json)
	$(if $(TIMELINE),@true,@cat bench/results/tracing.json)

bench-export: ## Export rows/s and RSS: SQLite, PostgreSQL (generic, COPY), psql (stack on PostgreSQL)
	@tests/run.sh venv
	.venv/bin/python bench/export_db_bench.py

bench-heartbeat: ## Web CPU per idle socket at the old and new ping settings (no Docker, ~15 min)
	@tests/run.sh venv
	.venv/bin/python bench/heartbeat.py

soak: ## Soak the running stack: 1,000 idle sockets + 50 tasks for 3 minutes (after `make up`)
	@tests/run.sh venv
	$(LOAD_LIMITS) $(COMPOSE) up -d --no-deps --wait nginx
	.venv/bin/python bench/soak.py --url http://127.0.0.1:$(or $(HTTP_PORT),8080); \
	  status=$$?; $(COMPOSE) up -d --no-deps --wait nginx; exit $$status

# For HTTPS on this machine (nginx/tls.yml): trust certs/ca.pem in the browser once.
CERTS ?= certs
certs: ## Create a local CA and a localhost certificate in certs/ (for nginx/tls.yml)
	tests/make_certs.sh $(CERTS)

# Docker Swarm (deploy/swarm/): the swarm is yours (`docker swarm init` on a manager,
# `docker swarm join` on the others); the test builds a two-node one of its own.
STACK ?= taskbeam

swarm-up: env ## Deploy to this engine's Swarm: images (pushed to IMAGE_REPO), secrets, stack
	STACK=$(STACK) deploy/swarm/up.sh

swarm-down: ## Remove the Swarm stack (keeps its secrets and volumes)
	docker stack rm $(STACK)

swarm-test: ## Two-node Swarm in containers: deploy the stack, run tests/integration/test_swarm.py
	@tests/run.sh venv
	tests/swarm/run.sh
