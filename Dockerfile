# syntax=docker/dockerfile:1
# Multi-stage build: the official Rust image compiles, debian:bookworm-slim runs.
# Build:  docker build -t e2ee-chat .
# Run:    docker run -p 8080:8080 -v chat-data:/data e2ee-chat

FROM rust:1-bookworm AS build
WORKDIR /app

# Dependency layer: compile the dependencies against stub sources first, so
# editing src/ does not rebuild them. Every target path named in Cargo.toml
# must exist for cargo to read the manifest (the test harness too), so each
# gets a stub; only src/ is replaced by the real sources below.
COPY Cargo.toml Cargo.lock ./
# Build settings (SQLite built with fdatasync): before the dependencies build.
COPY .cargo ./.cargo
RUN set -eux; \
    for f in $(grep -E '^path = ".*\.rs"' Cargo.toml | cut -d'"' -f2); do \
      mkdir -p "$(dirname "$f")"; echo 'fn main() {}' > "$f"; \
    done; \
    cargo build --release --bin e2ee-chat-server; \
    rm -rf src

COPY src ./src
COPY config ./config
# The web client's committed build, embedded into the binary (src/web.rs).
COPY web/dist ./web/dist
# Make sure cargo sees the real sources as newer than the stubs.
RUN touch src/lib.rs src/bin/*.rs && cargo build --release --bin e2ee-chat-server

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin chat \
    && mkdir -p /data && chown chat /data
WORKDIR /app
COPY --from=build /app/target/release/e2ee-chat-server /usr/local/bin/e2ee-chat-server
COPY config ./config
ENV CHAT_ENV=production \
    CHAT__SERVER__HOST=0.0.0.0 \
    CHAT__STORE__PATH=/data/chat.db \
    PORT=8080 \
    RUST_LOG=info
VOLUME ["/data"]
EXPOSE 8080
USER chat
# The binary checks its own /healthz (the slim image has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["e2ee-chat-server", "healthcheck"]
CMD ["e2ee-chat-server"]
