# syntax=docker/dockerfile:1
# One image with both binaries: `raftkv` (the node, the entrypoint) and `raftkv-operator`.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when a manifest or Cargo.lock
# changes. Every workspace member's manifest is needed to resolve the workspace; the sources
# are stubs here. `proto/` is small and its build script needs the .proto files.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY proto proto
COPY client/Cargo.toml client/Cargo.toml
COPY harness/Cargo.toml harness/Cargo.toml
COPY operator/Cargo.toml operator/Cargo.toml
COPY testbed/Cargo.toml testbed/Cargo.toml
COPY nemesis/Cargo.toml nemesis/Cargo.toml
RUN for crate in . client harness operator testbed nemesis; do mkdir -p $crate/src && touch $crate/src/lib.rs; done \
 && for crate in . operator nemesis; do echo 'fn main() {}' > $crate/src/main.rs; done \
 && cargo build --release --locked --workspace \
 && rm -rf src client/src harness/src operator/src testbed/src nemesis/src
COPY src src
COPY client/src client/src
COPY harness/src harness/src
COPY operator/src operator/src
COPY testbed/src testbed/src
COPY nemesis/src nemesis/src
# The same command CI runs (scripts/build-release.sh).
RUN find src client/src harness/src operator/src testbed/src nemesis/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --workspace
# The data directory, owned by the user the node runs as (Docker copies it into a new volume).
RUN mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="raftkv" \
      org.opencontainers.image.description="A replicated key-value store on Raft, and its Kubernetes operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://raftkv.dev"
COPY --from=builder /src/target/release/raftkv /usr/local/bin/raftkv
COPY --from=builder /src/target/release/raftkv-operator /usr/local/bin/raftkv-operator
COPY --from=builder --chown=65532:65532 /out/data /data
# Never root: the distroless `nonroot` user, the uid/gid the operator's pods and the chart
# run as (Pod Security "restricted"). Both binaries write only to their data directory, so the
# root filesystem can be read-only.
USER 65532:65532
# 7000: Raft and admin gRPC; 8080: HTTP API and metrics.
EXPOSE 7000 8080
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/raftkv"]
CMD ["serve", "--data-dir=/data"]
