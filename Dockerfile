# pushbot: one static binary in an empty (FROM scratch) image.
#
#   docker build -t pushbot .
#   docker run -d -p 8080:8080 -v pushbot-data:/data \
#     -e PUSHBOT_SERVER__PUBLIC_URL=https://push.example.com \
#     -e PUSHBOT_WECOM__CORP_ID=ww... -e PUSHBOT_WECOM__AGENT_ID=1000002 \
#     -e PUSHBOT_WECOM__SECRET=... -e PUSHBOT_WECOM__CALLBACK_TOKEN=... \
#     -e PUSHBOT_WECOM__ENCODING_AES_KEY=... pushbot
#
# Or mount a config file: -v ./pushbot.toml:/etc/pushbot/pushbot.toml:ro

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY config ./config
# +crt-static: no libc needed at run time. The getrandom cfg makes randomness come from the
# getrandom(2) syscall, not /dev/urandom, which an empty image does not have. The explicit
# --target keeps RUSTFLAGS off build scripts and proc macros.
ENV RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"'
RUN cargo build --release --locked --target x86_64-unknown-linux-gnu --bin pushbot \
 && cp target/x86_64-unknown-linux-gnu/release/pushbot /pushbot \
 && mkdir -p /rootfs/data /rootfs/etc/pushbot \
 && cp config/pushbot.example.toml /rootfs/etc/pushbot/pushbot.example.toml

FROM scratch
COPY --from=build /pushbot /pushbot
COPY --from=build --chown=65532:65532 /rootfs/ /
USER 65532:65532
# ./pushbot.toml is read when present, so a file mounted there is picked up and an
# environment-only configuration works too.
WORKDIR /etc/pushbot
ENV PUSHBOT_STORAGE__URL=sqlite:///data/pushbot.db \
    PUSHBOT_SERVER__LISTEN=0.0.0.0:8080
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/pushbot", "healthcheck"]
ENTRYPOINT ["/pushbot"]
CMD ["serve"]
