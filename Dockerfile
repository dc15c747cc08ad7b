# The sluice image: the host-built binary on a slim Debian base.
#
# Built by scripts/docker-image.sh, which compiles the binary, copies it
# stripped into a build context beside this file, and picks the base:
# debian:bookworm-slim where it can be pulled, or a base made locally with
# debootstrap where no registry is reachable (BASE names it).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# Only what the binary loads at run time: glibc, libstdc++ (RocksDB) and
# zlib are part of every Debian base.
RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice \
 && mkdir -p /var/lib/sluice \
 && chown sluice:sluice /var/lib/sluice
COPY sluice /usr/local/bin/sluice

USER sluice
WORKDIR /var/lib/sluice
# Settings come from SLUICE_* variables (dots become underscores); these are
# what a container needs whatever its role.
ENV SLUICE_LOG_DIRS=/var/lib/sluice/data \
    SLUICE_METRICS_LISTEN=0.0.0.0:9464 \
    RUST_LOG=info
VOLUME ["/var/lib/sluice"]
EXPOSE 9092 9093 9464
# Ready means registered, unfenced and caught up with the metadata log (a
# broker), or in the quorum with a known leader (a controller).
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
  CMD ["sluice", "health"]
# SIGTERM starts a broker's controlled shutdown.
STOPSIGNAL SIGTERM
# The server logs to stderr; in a container its log goes to stdout. `exec`
# leaves sluice as PID 1, so it gets the SIGTERM itself.
ENTRYPOINT ["/bin/sh", "-c", "exec sluice \"$@\" 2>&1", "sluice"]
CMD ["server"]
