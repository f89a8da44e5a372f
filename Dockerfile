# shoal's image: the static binary and nothing else. Built by `make build`, which compiles the binary
# on the host first (there is no registry here to pull a Rust image from, and none is needed).
FROM scratch

# The build context is `target/image/`, laid out by `make build`: the binary, `ctl` as a symlink to it
# (the multicall name, so `docker exec shoal ctl add gitlab` works as with btsync.docker), and an
# empty /tmp and /var/run.
COPY rootfs/ /

ENV PATH=/usr/local/bin \
    DATA_PATH=/data \
    HOST_DATA_PATH=/mnt/resources \
    CONFIG_INTERVAL_CHECK=10 \
    PID_PATH=/var/run/btsync.pid \
    DEBUG=btsync:ctl \
    UNAME=btysnc \
    UID=1000 \
    GID=1000

# 55555 peers, 8888 web UI and API, 2049 NFS.
EXPOSE 55555 8888 2049
VOLUME /data

# The daemon answers on its control socket when it is healthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/shoal", "ctl", "status"]

# SIGTERM stops the daemon cleanly within 5 s (well inside Docker's 10 s grace).
STOPSIGNAL SIGTERM

# No arguments: the daemon. `ctl …`, `bootstrap SECRET NS…`: as btsync.docker.
ENTRYPOINT ["/usr/local/bin/shoal"]
