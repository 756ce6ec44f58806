# syntax=docker/dockerfile:1
# One image with both binaries: `raftkv` (the node, the entrypoint) and `raftkv-operator`.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml/Cargo.lock change.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY operator/Cargo.toml operator/Cargo.toml
RUN mkdir -p src operator/src \
 && echo 'fn main() {}' > build.rs \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > operator/src/main.rs && touch operator/src/lib.rs \
 && cargo build --release --locked --workspace \
 && rm -rf src operator/src build.rs
COPY build.rs ./
COPY proto proto
COPY src src
COPY operator/src operator/src
# The same command CI runs (scripts/build-release.sh).
RUN touch build.rs src/main.rs src/lib.rs operator/src/main.rs operator/src/lib.rs \
 && cargo build --release --locked --workspace

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="raftkv" \
      org.opencontainers.image.description="A replicated key-value store on Raft, and its Kubernetes operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://raftkv.dev"
COPY --from=builder /src/target/release/raftkv /usr/local/bin/raftkv
COPY --from=builder /src/target/release/raftkv-operator /usr/local/bin/raftkv-operator
USER 65532:65532
# 7000: Raft and admin gRPC; 8080: HTTP API and metrics.
EXPOSE 7000 8080
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/raftkv"]
CMD ["serve", "--data-dir=/data"]
