# shoal — developer entry points. `make node` runs a node from source with no set-up; `make check`
# runs what CI runs. (The Docker image targets — build, run, run-bootstrap, test — come with the image.)

DATA ?= $(CURDIR)/shoal-data
# The environment a local node runs with: everything under $(DATA), as the current user.
LOCAL_ENV = env UID=$$(id -u) GID=$$(id -g) DATA_PATH=$(DATA) HOST_DATA_PATH=$(DATA) \
	PID_PATH=$(DATA)/.shoal/shoal.pid

.PHONY: node ctl check
node:
	cargo build --release --locked
	$(LOCAL_ENV) ./target/release/shoal daemon

# make ctl ARGS="add gitlab"
ctl:
	@$(LOCAL_ENV) ./target/release/shoal ctl $(ARGS)

check:
	bash .ci/run
