# shoal — developer entry points. `make node` runs a node from source with no set-up; `make check`
# runs what CI runs; `make build` builds the Docker image (FROM scratch, the static binary only);
# `make run` / `make run-bootstrap` run it as btsync.docker's did; `make test` builds it, starts four
# containers on a network of their own and harasses them until they converge (tests/cluster.py).

DATA ?= $(CURDIR)/shoal-data
# The environment a local node runs with: everything under $(DATA), as the current user.
LOCAL_ENV = env UID=$$(id -u) GID=$$(id -g) DATA_PATH=$(DATA) HOST_DATA_PATH=$(DATA) \
	PID_PATH=$(DATA)/.shoal/shoal.pid

IMAGE ?= shoal
TAG ?= latest
TARGET := x86_64-unknown-linux-gnu
STATIC_BIN := target/$(TARGET)/release/shoal
CONTEXT := target/image
# -it only when there is a terminal, so the targets also work from scripts.
TTY = $$(test -t 0 && echo -it)

.PHONY: node ctl check static build run run-bootstrap shell test
node:
	cargo build --release --locked
	$(LOCAL_ENV) ./target/release/shoal daemon

# make ctl ARGS="add gitlab"
ctl:
	@$(LOCAL_ENV) ./target/release/shoal ctl $(ARGS)

check:
	bash .ci/run

# The binary linked statically against glibc (musl is not installable here), for a FROM scratch image.
static:
	RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target $(TARGET) -p shoal

build: static
	rm -rf $(CONTEXT)
	mkdir -p $(CONTEXT)/rootfs/usr/local/bin $(CONTEXT)/rootfs/tmp $(CONTEXT)/rootfs/var/run $(CONTEXT)/rootfs/data
	chmod 1777 $(CONTEXT)/rootfs/tmp
	cp $(STATIC_BIN) $(CONTEXT)/rootfs/usr/local/bin/shoal
	ln -s shoal $(CONTEXT)/rootfs/usr/local/bin/ctl
	cp Dockerfile $(CONTEXT)/
	docker build -q -t $(IMAGE):$(TAG) $(CONTEXT)
	@docker images $(IMAGE):$(TAG) --format 'built {{.Repository}}:{{.Tag}}, {{.Size}}'

run: build
	docker run --rm $(TTY) --name shoal -p 55555:55555 -p 8888:8888 $(IMAGE):$(TAG)

run-bootstrap: build
	docker run --rm $(TTY) --name shoal $(IMAGE):$(TAG) bootstrap A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54 default

# btsync.docker's `make test`: the image, four containers, every scenario (prints PASS/FAIL per
# scenario with its convergence time; removes everything it created, pass or fail).
test:
	python3 tests/cluster.py

# btsync.docker had `make run-bash`; a FROM scratch image has no shell to run.
shell:
	@echo "The shoal image is FROM scratch: it has no shell. Inspect a running node with:"
	@echo "  docker exec shoal ctl status"
	@echo "  docker exec shoal ctl list"
	@docker exec shoal ctl status 2>/dev/null || true
