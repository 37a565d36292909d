# syntax=docker/dockerfile:1
#
# The Portcullis images. Three stages:
#
#   build  compiles `portcullis` and `portcullis-controller` (release profile,
#          Cargo.lock enforced).
#   init   `--target init`: the pod's init container, deploy/portcullis-init.sh
#          on debian:bookworm-slim with iptables (it needs a shell and iptables;
#          the proxy image has neither).
#   proxy  the default (last) stage: the sidecar, and the controller binary,
#          on distroless cc (glibc and libgcc_s, which the binaries link; no
#          shell, no package manager), as UID 2102 like Linkerd's proxy so
#          iptables rules that skip the proxy's UID keep working.
#
#   docker build -t portcullis:dev .
#   docker build --target init -t portcullis-init:dev .
#
# No HEALTHCHECK: Kubernetes probes GET /ready and /live on the admin port.

FROM docker.io/library/rust:1-bookworm AS build
# The release profile keeps line tables for backtraces, which makes each
# binary about 33 MB; the image drops them (function names stay in panic
# backtraces) and each binary is about 8 MB. Keep them with
# `--build-arg CARGO_PROFILE_RELEASE_STRIP=none`. (A build ARG is in the
# environment of RUN, where cargo reads it.)
ARG CARGO_PROFILE_RELEASE_STRIP=debuginfo
WORKDIR /src
# The whole context (.dockerignore keeps target/ and .git out). Downloads and
# compiled dependencies live in BuildKit cache mounts, not in layers, so a
# source change recompiles only Portcullis's own crates; the binaries are
# copied out of the cached target directory before the mount goes away.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p portcullis-proxy -p portcullis-controller \
    && install -D -m 0755 -t /out target/release/portcullis target/release/portcullis-controller

FROM docker.io/library/debian:bookworm-slim AS init
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --chmod=0755 deploy/portcullis-init.sh /usr/local/bin/portcullis-init
# Root with NET_ADMIN and NET_RAW (granted by the pod spec) to write the
# pod's nat table; it runs once, before the app and the proxy start.
USER 0
ENTRYPOINT ["/usr/local/bin/portcullis-init"]

FROM gcr.io/distroless/cc-debian12 AS proxy
COPY --from=build /out/portcullis /out/portcullis-controller /usr/local/bin/
# Kubelet probes the admin server from outside the pod, so it listens on all
# addresses in the image (the binary's own default is 127.0.0.1:4191).
ENV PORTCULLIS_ADMIN_ADDR=0.0.0.0:4191
USER 2102:2102
# 4143: inbound (iptables-redirected) connections; 4191: admin (/ready,
# /live, /metrics, /policy).
EXPOSE 4143 4191
ENTRYPOINT ["/usr/local/bin/portcullis"]
