# syntax=docker/dockerfile:1
#
# dropgate image: the one dropgate binary on debian-slim (same glibc as the builder).
#
#   docker build -t dropgate .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -e DATABASE_URL=postgres://postgres@db:5432/dropgate \
#     -e REDIS_URL=redis://redis:6379/0 dropgate
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.
# Migrations (migrations/) and Lua scripts (lua/) are compiled into the binary,
# so the runtime stage needs nothing but the binary itself.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------- builder ---
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src

# The context is filtered by .dockerignore (no target/, .git/, load-test output).
COPY . .

# target/ lives in a cache mount, which is not part of the image layer, so the
# binary is copied out of it inside the same RUN.
RUN --mount=type=cache,id=dropgate-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=dropgate-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=dropgate-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin dropgate \
 && install -D -m 0755 target/release/dropgate /out/dropgate

# ---------------------------------------------------------------- runtime ---
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: for TLS store URLs should the crate ever enable TLS (it
# does not today).
# curl: the container healthcheck.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 dropgate \
 && useradd --system --uid 10001 --gid dropgate \
      --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin dropgate

COPY --from=builder /out/dropgate /usr/local/bin/dropgate

USER 10001:10001

# Inside a container, listen on all interfaces; publish the port to choose
# who can reach it (docker-compose.yml publishes to 127.0.0.1 only).
ENV DROPGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080

# Liveness only: /healthz is 200 while the process runs. docker-compose.yml
# overrides this with /readyz (Redis and Postgres reachable). Assumes the
# default port 8080 above.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]

ENTRYPOINT ["dropgate"]
CMD ["serve"]
