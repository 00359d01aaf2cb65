# tsbridge container image.
#
#   podman build -t tsbridge .                    # compile in a Rust image, then the runtime image
#   podman build -t tsbridge --target prebuilt .  # a binary built outside: ./tsbridge in the context
#   podman run --rm -p 8889:8889 -p 8189:8189/udp tsbridge serve --demo --listen 0.0.0.0:8889 \
#       --ice-host 203.0.113.7          # the address viewers reach (or --network host)
#
# The runtime stage is Debian slim, a non-root user, the binary and the demo file. WebRTC media
# is on one UDP port (8189); HTTP (WHEP/WHIP, API, player) on 8889. Configuration by flags,
# TSBRIDGE_* variables or a file (--config /etc/tsbridge/tsbridge.toml).

ARG BASE=docker.io/library/debian:bookworm-slim

# ---- build: the release binary -----------------------------------------------------------
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
# libavcodec is only needed with --features ffmpeg (broadcast codecs): see the README.
RUN cargo build --release --locked --bin tsbridge \
    && strip target/release/tsbridge \
    && cp target/release/tsbridge /tsbridge

# ---- base: what every runtime image has --------------------------------------------------
FROM ${BASE} AS base
# libsrt for --srt-listen / --srt-pull (loaded at run time; without it SRT says what to
# install and everything else works). Empty to leave it out: --build-arg EXTRA_PACKAGES=
ARG EXTRA_PACKAGES="libsrt1.5-openssl"
RUN if [ -n "$EXTRA_PACKAGES" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $EXTRA_PACKAGES \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /var/lib/tsbridge tsbridge \
    && mkdir -p /var/lib/tsbridge && chown tsbridge:tsbridge /var/lib/tsbridge
WORKDIR /usr/share/tsbridge
COPY testdata/h264_opus.ts testdata/h264_opus.ts
USER tsbridge
EXPOSE 8889/tcp 8189/udp
# Another --listen port: -e TSBRIDGE_HEALTH_URL=http://127.0.0.1:PORT
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
    CMD ["tsbridge", "health", "--timeout", "3"]
ENTRYPOINT ["tsbridge"]
CMD ["serve", "--demo"]

# ---- prebuilt: the runtime image around a binary built outside (CI, cross builds) -----------
FROM base AS prebuilt
COPY tsbridge /usr/local/bin/tsbridge

# ---- runtime (the default target) --------------------------------------------------------
FROM base AS runtime
COPY --from=build /tsbridge /usr/local/bin/tsbridge
