# steward, built from this repository.
#
# Dependencies are built in their own layer from Cargo.toml and Cargo.lock alone (with an empty
# crate standing in for the sources), so a change to steward's code rebuilds only steward.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/.fingerprint/steward-* target/release/deps/steward-* target/release/deps/libsteward-*
COPY src src
COPY migrations migrations
RUN cargo build --release --locked

FROM debian:bookworm-slim
# curl: the healthchecks below.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin steward \
    && mkdir -p /app/data && chown steward /app/data
COPY --from=build /src/target/release/steward /usr/local/bin/steward
COPY jobs /app/jobs
COPY workflows /app/workflows
COPY catalog /app/catalog
WORKDIR /app
# Local exports and upgrade backups (when no S3 bucket is set) go here: mount a volume.
ENV STEWARD_EXPORT_DIR=/app/data/exports
VOLUME ["/app/data"]
USER steward
ENTRYPOINT ["steward"]
CMD ["worker"]
