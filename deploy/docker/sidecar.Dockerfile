# syntax=docker/dockerfile:1
# Image infermesh/sidecar:0.1.0: the static musl binary infermesh-sidecar on an empty base, non-root.
# Build from the repository root:
#   docker build -f deploy/docker/sidecar.Dockerfile -t infermesh/sidecar:0.1.0 .
# (The local cluster builds the same image without Docker: hack/images.sh.)

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# Set by BuildKit for the platform being built (amd64 or arm64); the stage runs on that platform.
ARG TARGETARCH=amd64
WORKDIR /src
# musl-tools: C parts (ring) need a musl C compiler for the static build.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && case "${TARGETARCH}" in \
      amd64) echo x86_64-unknown-linux-musl > /target ;; \
      arm64) echo aarch64-unknown-linux-musl > /target ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
 && rustup target add "$(cat /target)"
COPY . .
RUN cargo build --release --locked --target "$(cat /target)" -p infermesh-sidecar --bin infermesh-sidecar \
 && mkdir -p /out /out/tmp && chmod 1777 /out/tmp \
 && cp "target/$(cat /target)/release/infermesh-sidecar" /out/

FROM scratch
COPY --from=build /out/infermesh-sidecar /usr/local/bin/infermesh-sidecar
COPY --from=build /out/tmp /tmp
USER 65532:65532
EXPOSE 15006 15001 15020
ENTRYPOINT ["/usr/local/bin/infermesh-sidecar"]
