#!/usr/bin/env bash
# Smoke test of the Docker image as btsync.docker's users drive it: build it, check its size, run it
# with `bootstrap`, drive it with `docker exec … ctl`, check it runs as UID:GID and stops cleanly.
# Everything it starts is removed on exit, pass or fail. (The multi-node harassment suite is
# `make test`, which needs the sync engine.)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-shoal}
NAME="shoal-smoke-$$"
MAX_BYTES=$((12 * 1000 * 1000))
SECRET=A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54

cleanup() { docker rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
passed=0 failed=0
check() {
  local what=$1; shift
  if "$@"; then echo "ok   $what"; passed=$((passed + 1)); else echo "FAIL $what"; failed=$((failed + 1)); fi
}

make -s build IMAGE="$IMAGE"
size=$(docker image inspect "$IMAGE" --format '{{.Size}}')
echo "image $IMAGE: $size bytes"
check "image is at most 12 MB" test "$size" -le "$MAX_BYTES"
check "docker run --rm $IMAGE --help" bash -c "docker run --rm '$IMAGE' --help | grep -q Usage"
check "the image generates a secret" bash -c "docker run --rm '$IMAGE' secret | grep -Eq '^A[A-Z2-7]{32}$'"

# No network: this checks the image's interface, not sync; and LAN announcements must not reach
# a docker network this test did not create.
docker run -d --name "$NAME" --network none -e SHOAL_LAN=off "$IMAGE" bootstrap "$SECRET" testing >/dev/null
ready() { for _ in $(seq 100); do docker exec "$NAME" ctl status >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
check "bootstrap starts the daemon" ready
check "ctl list shows the bootstrapped namespace" bash -c "[ \"\$(docker exec $NAME ctl list)\" = testing ]"
check "ctl add is live" bash -c "docker exec $NAME ctl add gitlab && docker exec $NAME ctl status --json | grep -q '\"gitlab\"'"
check "ctl path gives the host path" bash -c "[ \"\$(docker exec $NAME ctl path gitlab)\" = /mnt/resources/gitlab ]"
check "ctl has answers 0 and 1" bash -c "docker exec $NAME ctl has gitlab && ! docker exec $NAME ctl has nope"
runs_as() {
  local pid; pid=$(docker inspect "$NAME" --format '{{.State.Pid}}')
  grep -Eq '^Uid:\s+1000\s+1000\s+1000\s+1000$' "/proc/$pid/status" &&
    grep -Eq '^Gid:\s+1000\s+1000\s+1000\s+1000$' "/proc/$pid/status"
}
check "the daemon runs as 1000:1000" runs_as
start=$(date +%s%N)
docker stop -t 10 "$NAME" >/dev/null
took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "docker stop took ${took_ms} ms"
check "SIGTERM stops it within 5 s" test "$took_ms" -lt 5000
check "it exited 0" bash -c "[ \"\$(docker inspect $NAME --format '{{.State.ExitCode}}')\" = 0 ]"

echo "image-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
