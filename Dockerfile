# steward, built from this repository.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/steward /usr/local/bin/steward
COPY jobs /app/jobs
COPY workflows /app/workflows
COPY catalog /app/catalog
WORKDIR /app
ENTRYPOINT ["steward"]
CMD ["worker"]
