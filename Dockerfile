# syntax=docker/dockerfile:1
# shardcast broker image:
#   docker build -t shardcast .
#   docker run -p 8080:8080 -e SHARDCAST_API_KEY=change-me shardcast
# SHARDCAST_API_KEY turns on the HTTP API key (docker/entrypoint.sh): from the host the
# broker sees Docker's NAT address, never loopback, so a keyless publish gets 403.

FROM rust:1-bookworm AS builder
WORKDIR /build
# The whole workspace: the manifest names the loadtest crate (and later benches), and
# config/shardcast.toml is compiled into the binary as its defaults.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin shardcast \
    && cp target/release/shardcast /usr/local/bin/shardcast

FROM debian:bookworm-slim
# curl only for the HEALTHCHECK below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin shardcast
COPY --from=builder /usr/local/bin/shardcast /usr/local/bin/shardcast
COPY config/shardcast.toml /etc/shardcast/shardcast.toml
COPY docker/entrypoint.sh /usr/local/bin/shardcast-entrypoint
USER shardcast:shardcast
EXPOSE 8080
# Assumes the default listen port; adjust if you change server.listen.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# The broker handles SIGTERM itself (drains, closes clients with 1001, exits 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["shardcast-entrypoint"]
CMD ["serve", "--config", "/etc/shardcast/shardcast.toml"]
