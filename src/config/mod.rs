//! Command line and environment configuration, and the config file (`file.rs`) under them.

pub mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::{Args, Parser, Subcommand};

use crate::stream::gop::GopBound;
use crate::webrtc::PlayoutDelay;

/// MPEG-TS in, WebRTC (WHEP) out: sub-second browser playback of live TS streams.
#[derive(Debug, Parser)]
#[command(name = "tsbridge", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: take MPEG-TS from sources, serve WHEP viewers.
    Serve(ServeArgs),
    /// Push a TS file to a tsbridge server in real time (HTTP PUT /ingest/{stream}).
    Replay(ReplayArgs),
    /// Print the tracks of a TS file or URL (from the PMT), codec details, GOP and bitrate.
    Probe(ProbeArgs),
    /// Run N WHEP viewers against a server and report connections, packets, loss and start-up
    /// times: runs the load tool `tsbridge-loadtest` from this binary's directory.
    #[command(disable_help_flag = true)]
    Loadtest(LoadtestArgs),
    /// Ask a server whether it is ready (GET /readyz, or /healthz with --live): exit 0 when it
    /// answers 2xx within the timeout, 1 otherwise. For container HEALTHCHECKs and probes in
    /// images without curl.
    Health(HealthArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The server's base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8889",
        env = "TSBRIDGE_HEALTH_URL"
    )]
    pub url: String,
    /// Ask whether the process serves at all (/healthz), not whether it takes work (/readyz:
    /// 503 while draining or while its cluster's Redis is out of reach).
    #[arg(long)]
    pub live: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

/// `tsbridge loadtest ARGS…`: handed as they are to `tsbridge-loadtest` (a client of the
/// server, so its own binary rather than part of this one).
#[derive(Debug, Clone, Args)]
pub struct LoadtestArgs {
    /// The load tool's arguments (`--url URL --viewers N …`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}

/// A `NAME=VALUE` pair from the command line.
#[derive(Debug, Clone)]
pub struct Named<T> {
    pub name: String,
    pub value: T,
}

fn parse_named<T: std::str::FromStr>(s: &str) -> Result<Named<T>, String>
where
    T::Err: std::fmt::Display,
{
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    if !valid_stream_name(name) {
        return Err(format!("invalid stream name {name:?}: {STREAM_NAME_RULE}"));
    }
    let value = value.parse::<T>().map_err(|e| format!("{value:?}: {e}"))?;
    Ok(Named {
        name: name.to_string(),
        value,
    })
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err("must be between 0 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_backlog_rate(s: &str) -> Result<f64, String> {
    let mbit: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(1.0..=100_000.0).contains(&mbit) {
        return Err("must be between 1 and 100000 Mbit/s".into());
    }
    Ok(mbit)
}

fn parse_gop_bound(s: &str) -> Result<GopBound, String> {
    s.parse()
}

/// `--playout-delay`: bounds, or none (`off`). An alias, so that clap does not take the
/// `Option` for "may be left out".
pub type PlayoutDelayFlag = Option<PlayoutDelay>;

fn parse_playout_delay(s: &str) -> Result<PlayoutDelayFlag, String> {
    match s {
        "off" => Ok(None),
        _ => s.parse().map(Some),
    }
}

/// libsrt's rule for a passphrase (`SRTO_PASSPHRASE`): 10 to 79 characters.
pub fn valid_srt_passphrase(s: &str) -> bool {
    (10..=79).contains(&s.len())
}

fn parse_srt_passphrase(s: &str) -> Result<String, String> {
    if valid_srt_passphrase(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "an SRT passphrase has 10 to 79 characters (this one has {})",
            s.len()
        ))
    }
}

fn parse_stream_name(s: &str) -> Result<String, String> {
    if valid_stream_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!("invalid stream name {s:?}: {STREAM_NAME_RULE}"))
    }
}

/// Stream names: 1–64 of `A-Za-z0-9._-`, starting with a letter or digit (no `.`, `..`,
/// nor a name a command line would take for a flag).
pub fn valid_stream_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What an invalid stream name is told.
pub const STREAM_NAME_RULE: &str = "use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit";

/// Shortest `--cluster-token`: it signs the node records in Redis.
pub const CLUSTER_TOKEN_MIN: usize = 16;

/// The cluster token of a `--cluster` node: required, long enough, and none of the other
/// tokens (a viewer's or publisher's token must never open the nodes' doors).
pub fn cluster_token(cfg: &ServeArgs) -> Result<String, String> {
    let Some(t) = &cfg.cluster_token else {
        return Err(
            "--cluster needs --cluster-token: a secret of the nodes only (at least \
                    16 characters, the same on every node, none of the other tokens)"
                .into(),
        );
    };
    if t.len() < CLUSTER_TOKEN_MIN {
        return Err(format!(
            "--cluster-token is {} characters: use at least {CLUSTER_TOKEN_MIN} (e.g. `openssl rand -hex 16`)",
            t.len()
        ));
    }
    let others = [
        ("--view-token", &cfg.view_token),
        ("--publish-token", &cfg.publish_token),
        ("--admin-token", &cfg.admin_token),
        ("--metrics-token", &cfg.metrics_token),
    ];
    if let Some((flag, _)) = others.iter().find(|(_, v)| v.as_deref() == Some(t)) {
        return Err(format!(
            "--cluster-token must differ from {flag}: it opens the nodes' TS pulls"
        ));
    }
    Ok(t.clone())
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// HTTP listen address (WHEP, ingest, API, player pages).
    #[arg(long, env = "TSBRIDGE_LISTEN", default_value = "0.0.0.0:8889")]
    pub listen: SocketAddr,

    /// The one UDP address all WebRTC media uses (every session shares it).
    #[arg(long, env = "TSBRIDGE_ICE_UDP", default_value = "0.0.0.0:8189")]
    pub ice_udp: SocketAddr,

    /// Address (IP or DNS name) to announce as a host candidate; repeat for several.
    /// Use it behind NAT or in containers: the public/host address viewers can reach.
    /// Default: the bound address, or when bound to 0.0.0.0 the loopback and primary addresses.
    #[arg(long = "ice-host", env = "TSBRIDGE_ICE_HOST", value_delimiter = ',')]
    pub ice_hosts: Vec<String>,

    /// STUN/TURN server URL handed to WebRTC clients in `Link` headers; repeat for several.
    #[arg(
        long = "ice-server",
        env = "TSBRIDGE_ICE_SERVER",
        value_delimiter = ','
    )]
    pub ice_servers: Vec<String>,

    /// Replay a TS file as stream NAME, paced in real time and looping forever.
    #[arg(long = "replay", env = "TSBRIDGE_REPLAY", value_name = "NAME=FILE", value_parser = parse_named::<PathBuf>, value_delimiter = ',')]
    pub replays: Vec<Named<PathBuf>>,

    /// Receive MPEG-TS over UDP as stream NAME (a multicast ADDR is joined).
    #[arg(long = "udp", env = "TSBRIDGE_UDP", value_name = "NAME=ADDR", value_parser = parse_named::<SocketAddr>, value_delimiter = ',')]
    pub udps: Vec<Named<SocketAddr>>,

    /// For `--udp` sources that send TS in RTP (RFC 2250, e.g. `ffmpeg -f rtp_mpegts`, IPTV
    /// multicast; detected by itself): how long, in milliseconds, a packet that overtook
    /// others waits for them before they are given up on (counted as lost in
    /// `/streams/{s}`). More rides out more reordering at the cost of that much delay when a
    /// packet is really lost; 0 passes packets in arrival order. Plain TS is never delayed.
    #[arg(
        long,
        env = "TSBRIDGE_UDP_REORDER_MS",
        value_name = "MS",
        default_value_t = 50
    )]
    pub udp_reorder_ms: u64,

    /// Listen for SRT callers on ADDR (e.g. `0.0.0.0:8890`; off unless given): each publishes
    /// TS into the stream its stream id names, `#!::r=NAME,m=publish,s=TOKEN` or `NAME`
    /// (ffmpeg: `-f mpegts 'srt://HOST:8890?streamid=#!::r=cam1,s=TOKEN'`). The token is
    /// checked as for HTTP publishing (--publish-token, the stream's own key, the auth hook
    /// with protocol "srt"); one source per name, as for every source. Needs libsrt 1.5 at run
    /// time (Debian/Ubuntu: apt-get install libsrt1.5-openssl).
    #[arg(long, env = "TSBRIDGE_SRT_LISTEN", value_name = "ADDR")]
    pub srt_listen: Option<SocketAddr>,

    /// Pull stream NAME from a remote SRT listener (an encoder, a peer server,
    /// `srt-live-transmit`): `NAME=srt://HOST:PORT[?streamid=…&passphrase=…&latency=MS]`
    /// (values as ffmpeg writes them; latency defaults to --srt-latency-ms). When the
    /// connection fails or ends, it is called again with backoff (0.5 s doubling to 5 s);
    /// each change is logged once. In a cluster the name is claimed before each call, as a
    /// publisher's: while another node has its source, the pull waits and asks again. Repeat
    /// for several. Needs libsrt 1.5 at run time.
    #[arg(long = "srt-pull", env = "TSBRIDGE_SRT_PULL", value_name = "NAME=URL",
          value_parser = parse_named::<String>, value_delimiter = ',')]
    pub srt_pulls: Vec<Named<String>>,

    /// AES passphrase (10 to 79 characters) every SRT caller must encrypt with; unset: callers
    /// must not encrypt.
    #[arg(long, env = "TSBRIDGE_SRT_PASSPHRASE", hide_env_values = true,
          value_parser = parse_srt_passphrase)]
    pub srt_passphrase: Option<String>,

    /// SRT receive latency in milliseconds: how long a lost packet may take to be sent again
    /// (ARQ) before it is given up. About 4x the round trip time is the usual rule; more
    /// survives worse links at the cost of that much delay. A caller that sets a larger
    /// latency of its own gets that (SRT takes the larger of both sides).
    #[arg(
        long,
        env = "TSBRIDGE_SRT_LATENCY_MS",
        value_name = "MS",
        default_value_t = 120
    )]
    pub srt_latency_ms: u64,

    /// Read MPEG-TS from standard input as stream NAME.
    #[arg(long, env = "TSBRIDGE_STDIN", value_name = "NAME", value_parser = parse_stream_name)]
    pub stdin: Option<String>,

    /// How long a WHEP POST waits for its stream to become ready, in seconds.
    #[arg(long, env = "TSBRIDGE_WHEP_WAIT", default_value = "15", value_parser = parse_secs)]
    pub whep_wait: Duration,

    /// Serve a built-in looping demo stream named "demo" from testdata/ and print its URLs.
    #[arg(long, env = "TSBRIDGE_DEMO", value_parser = FalseyValueParser::new())]
    pub demo: bool,

    /// Run this command for each WHIP stream: the publisher's TS on its stdin, its stdout TS
    /// is what viewers of /whep/{stream} see (an AI model, an ffmpeg filter…). Run by `sh -c`,
    /// `{stream}` is replaced by the stream name. It is restarted with backoff if it exits
    /// while the publisher is still there; the raw input stays at /streams/{stream}.input.ts.
    #[arg(long, env = "TSBRIDGE_PIPELINE", value_name = "CMD")]
    pub pipeline: Option<String>,

    /// How long viewers stay connected after a stream's source ends, waiting for a new one
    /// (a restarting publisher or pipeline), in seconds.
    #[arg(long, env = "TSBRIDGE_SOURCE_GRACE", default_value = "10", value_parser = parse_secs)]
    pub source_grace: Duration,

    /// Bearer token required to publish (WHIP, PUT /ingest). Unset: anyone may publish.
    #[arg(long, env = "TSBRIDGE_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,

    /// Bearer token required to view (WHEP, TS pull, stream API). Unset: anyone may view.
    #[arg(long, env = "TSBRIDGE_VIEW_TOKEN", hide_env_values = true)]
    pub view_token: Option<String>,

    /// Most WebRTC sessions (viewers + publishers) at once; more get 503 + Retry-After.
    #[arg(long, env = "TSBRIDGE_MAX_SESSIONS", default_value_t = 2000)]
    pub max_sessions: usize,

    /// Most viewers of one stream at once; more get 503 + Retry-After.
    #[arg(long, env = "TSBRIDGE_MAX_VIEWERS", default_value_t = 1000)]
    pub max_viewers: usize,

    /// Most WHEP POSTs waiting for their streams at once; more get 503 + Retry-After.
    #[arg(long, env = "TSBRIDGE_MAX_WAITING", default_value_t = 1000)]
    pub max_waiting: usize,

    /// Most streams at once (each has a ring buffer of --ring-bytes and a media task): a new
    /// ingest, WHIP publisher or cluster pull past it gets 503 + Retry-After (logged once per
    /// burst). Replay, UDP and stdin sources count but are never refused. Streams nothing
    /// uses are removed after a minute; raise it if you run more streams than that.
    #[arg(long, env = "TSBRIDGE_MAX_STREAMS", default_value_t = 1000)]
    pub max_streams: usize,

    /// Most HTTP connections, WHEP POSTs waiting for their stream, and WebRTC sessions that
    /// one client address may hold at once (each counted on its own); past it, 503 +
    /// Retry-After. A --trusted-proxy's connections are not capped (its clients are, by their
    /// X-Forwarded-For address). Raise it for many viewers behind one NAT, or for load tests
    /// from one host; 0: no cap.
    #[arg(long, env = "TSBRIDGE_MAX_PER_IP", default_value_t = 100)]
    pub max_per_ip: usize,

    /// Most `GET /streams/{s}.ts` readers of one stream at once (other nodes of the cluster
    /// not counted); more get 503 + Retry-After. A reader that takes no data for
    /// --http-timeout, or that the stream's ring laps three times (it cannot keep up), is
    /// disconnected.
    #[arg(long, env = "TSBRIDGE_MAX_TS_READERS", default_value_t = 16)]
    pub max_ts_readers: usize,

    /// Seconds a `PUT /ingest/{s}` may send nothing before it is ended and the name is free
    /// for the source's next connection (a camera whose connection died without a close
    /// would otherwise hold it, and get 409 on every reconnect). 0: never.
    #[arg(long, env = "TSBRIDGE_INGEST_IDLE", default_value = "10", value_parser = parse_secs)]
    pub ingest_idle: Duration,

    /// AAC or MPEG audio (which browsers cannot play over WebRTC) is transcoded to Opus once
    /// per stream: `auto` does it when a program has such audio and no Opus track.
    #[arg(long, env = "TSBRIDGE_AUDIO_TRANSCODE", value_enum, default_value_t = Transcode::Auto)]
    pub audio_transcode: Transcode,

    /// H.264 with B-frames (libx264's and OBS's defaults), which browsers' WebRTC decoders
    /// show only a few frames of, is decoded and re-encoded once per stream without B-frames
    /// (Constrained Baseline, same size, frame rate and keyframes, about the same bitrate;
    /// ~one core per 1080p30 stream): `auto` does it when B-frames are found, and when no
    /// IDR comes within `--gop-cache-max` (periodic intra refresh: browsers start only at an
    /// IDR; the re-encoder makes one at each recovery point and on a viewer's request); `off`
    /// sends the video as it is (and says so). Cheaper still: encode the source with `-bf 0`
    /// and keyframes.
    #[arg(long, env = "TSBRIDGE_VIDEO_TRANSCODE", value_enum, default_value_t = Transcode::Auto)]
    pub video_transcode: Transcode,

    /// Per-stream TS ring buffer size in bytes (how far a slow reader may lag).
    #[arg(long, env = "TSBRIDGE_RING_BYTES", default_value_t = 8 << 20)]
    pub ring_bytes: usize,

    /// Seconds an HTTP client has to send its request head, and then its body (TS ingest
    /// excepted); also how long an idle keep-alive connection is kept, and how long a client
    /// may leave the server's writes untaken (a TS reader that stopped reading). Slower: 408 /
    /// closed.
    #[arg(long, env = "TSBRIDGE_HTTP_TIMEOUT", default_value = "10", value_parser = parse_secs)]
    pub http_timeout: Duration,

    /// Most HTTP connections open at once (each costs a file descriptor); more are answered
    /// 503 + Retry-After and closed.
    #[arg(long, env = "TSBRIDGE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Largest accepted SDP / trickle body in bytes.
    #[arg(long, env = "TSBRIDGE_MAX_BODY", default_value_t = 64 << 10)]
    pub max_body: usize,

    /// ICE/DTLS setup deadline and disconnect timeout for WebRTC sessions, in seconds.
    #[arg(long, env = "TSBRIDGE_ICE_TIMEOUT", default_value = "15", value_parser = parse_secs)]
    pub ice_timeout: Duration,

    /// Media threads: each has its own socket on the --ice-udp port (SO_REUSEPORT) and its
    /// share of the WebRTC sessions. 0: one per CPU core.
    #[arg(long, env = "TSBRIDGE_MEDIA_THREADS", default_value_t = 0)]
    pub media_threads: usize,

    /// Send every RTP packet through str0m (the WebRTC library): slower (~1.5x the CPU per
    /// packet); for comparison and troubleshooting. By default, the RTP to viewers with an
    /// AES-GCM SRTP profile (all browsers) is written and encrypted by tsbridge directly.
    #[arg(long, env = "TSBRIDGE_NO_DIRECT_SEND", value_parser = FalseyValueParser::new())]
    pub no_direct_send: bool,

    /// Pace of a new viewer's start-up burst, in Mbit/s: the stream's video since its last
    /// keyframe (the GOP cache), sent so the picture shows at once and then fast-forwards to
    /// live (a 5 s GOP of a 2 Mbit/s stream in 0.4 s at the default). Streams faster than a
    /// quarter of it go at 4x their bitrate instead. A viewer whose link is slower than the
    /// pace loses part of the burst (behind 20 Mbit/s at 1000: a third of the start's packets
    /// and seconds of frozen picture): set it below your viewers' downlink.
    #[arg(long, env = "TSBRIDGE_BACKLOG_RATE", default_value_t = 25.0,
          value_parser = parse_backlog_rate)]
    pub backlog_rate: f64,

    /// Most video the GOP cache of a stream holds for instant start: SECONDS[,BYTES] (bytes
    /// may end in KiB/MiB/GiB or kB/MB/GB). The cache holds the video since the last keyframe,
    /// or since the last recovery point (periodic intra refresh) when keyframes are further
    /// apart; a source with no start point within it is reported (API, log), and one with no
    /// keyframe within it is re-encoded with `--video-transcode auto` (browsers start only at
    /// a keyframe).
    #[arg(long, env = "TSBRIDGE_GOP_CACHE_MAX", value_name = "SECONDS[,BYTES]",
          default_value = "15,16MiB", value_parser = parse_gop_bound)]
    pub gop_cache_max: GopBound,

    /// Bounds on viewers' jitter buffers, MIN,MAX in milliseconds, told to browsers in the
    /// playout-delay RTP header extension (Chrome, Safari). The default keeps a browser's
    /// adaptive buffer (it starts near 0 on a clean link) and caps it at 1 s. A MAX of 500 or
    /// less with MIN 0 (e.g. 0,400) switches Chrome to its low-latency renderer: each frame is
    /// shown as soon as it is decoded, tens of ms sooner, but a source or link that delivers
    /// frames unevenly (a re-encoded B-frame source, Wi-Fi) then freezes now and then. `off`:
    /// not negotiated (browsers buffer up to seconds on a bad link).
    #[arg(long, env = "TSBRIDGE_PLAYOUT_DELAY", value_name = "MIN,MAX|off",
          default_value = "0,1000", value_parser = parse_playout_delay)]
    pub playout_delay: PlayoutDelayFlag,

    /// WHIP publishers' jitter buffer, MIN[,MAX] in milliseconds: their RTP is put back in
    /// order and held at least MIN; a missing packet is asked for again (NACK) until its
    /// deadline, past which the video skips to the next keyframe and asks the publisher for
    /// one (PLI). The hold grows toward MAX while the link's jitter (or the resends it needs)
    /// demands, and shrinks back when it calms down. MAX left out: a fixed MIN. `0`: off
    /// (packets pass in arrival order at once; a loss goes on to the decoder, which shows a
    /// broken picture until the next keyframe).
    #[arg(
        long,
        env = "TSBRIDGE_WHIP_JITTER_MS",
        value_name = "MIN[,MAX]",
        default_value = "40,400"
    )]
    pub whip_jitter_ms: crate::webrtc::jitter::JitterConfig,

    /// A TOML file of these flags, named with `_` (`ice_udp = "0.0.0.0:8189"`,
    /// `replay = ["cam=cam.ts"]`); flags and the environment override it; an unknown key is an
    /// error.
    #[arg(long, env = "TSBRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log lines as text (colour only on a terminal) or as JSON objects, one per line.
    #[arg(long, env = "TSBRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Username and credential for the TURN servers of `--ice-server`, handed to clients that
    /// passed a stream's checks, in the `Link` headers of their session (and of an `OPTIONS`
    /// with their token, which the player and publish pages ask). Prefer `--turn-secret`.
    #[arg(long, env = "TSBRIDGE_ICE_USERNAME")]
    pub ice_username: Option<String>,
    #[arg(long, env = "TSBRIDGE_ICE_CREDENTIAL", hide_env_values = true)]
    pub ice_credential: Option<String>,

    /// Secret shared with the TURN servers of `--ice-server` (coturn's `static-auth-secret`
    /// with `use-auth-secret`): each WHEP/WHIP session gets its own time-limited TURN
    /// credentials in its `Link` headers (username `expiry:stream`), instead of a static
    /// password.
    #[arg(long, env = "TSBRIDGE_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// How long minted TURN credentials (`--turn-secret`) stay valid, in seconds.
    #[arg(long, env = "TSBRIDGE_TURN_TTL", default_value = "86400", value_parser = parse_secs)]
    pub turn_ttl: Duration,

    /// Token of the admin API: registering streams with their own keys (`POST`/`DELETE
    /// /streams/{s}`), listing and ending sessions; also accepted on `/metrics`.
    #[arg(long, env = "TSBRIDGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Require this bearer token (or the admin token) on `/metrics`.
    #[arg(long, env = "TSBRIDGE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Before every publish, view and API read, POST a JSON description (action, protocol,
    /// stream, token, ip, query) here: 2xx allows, anything else is 401. Answers are cached a
    /// few seconds per question (all six fields: never reused for another address or query).
    #[arg(long, env = "TSBRIDGE_AUTH_HOOK", value_name = "URL")]
    pub auth_hook: Option<String>,

    /// Seconds the auth hook has to answer; no answer is a refusal (fail closed).
    #[arg(long, env = "TSBRIDGE_AUTH_HOOK_TIMEOUT", default_value = "3", value_parser = parse_secs)]
    pub auth_hook_timeout: Duration,

    /// POST JSON events here (stream.ready, stream.ended, session.started, session.ended), from
    /// a bounded queue with retries: a slow or dead hook never delays media or requests.
    #[arg(long, env = "TSBRIDGE_EVENT_HOOK", value_name = "URL")]
    pub event_hook: Option<String>,

    /// Where registered streams' keys are kept across restarts (`keys.json`); without it they
    /// last as long as the process.
    #[arg(long, env = "TSBRIDGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Serve HTTPS with this certificate chain (PEM) and `--tls-key`: browsers on other hosts
    /// can then publish from the camera page (a secure page is required for a camera).
    #[arg(
        long,
        env = "TSBRIDGE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    #[arg(
        long,
        env = "TSBRIDGE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// A reverse proxy's address: its `X-Forwarded-Proto`/`-Host`/`-For` are believed (URLs in
    /// `Location`, the client address for the auth hook); repeat for several.
    #[arg(
        long = "trusted-proxy",
        env = "TSBRIDGE_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Join a cluster whose state is in this Redis (`redis://HOST:PORT[/DB]`): one source per
    /// stream name cluster-wide, viewers of a stream another node has are served here from
    /// one TS pull, a full node redirects viewers (307) to the least-loaded one.
    #[arg(
        long,
        env = "TSBRIDGE_CLUSTER",
        value_name = "REDIS_URL",
        requires = "public_url"
    )]
    pub cluster: Option<String>,

    /// The URL clients and the other nodes reach this node at (`http://10.0.0.5:8889`).
    #[arg(long, env = "TSBRIDGE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Secret of the nodes of a cluster (required with --cluster, at least 16 characters,
    /// unlike every other token): they send it each other for TS pulls, it opens `/cluster`,
    /// and it signs the node records in Redis (a record that does not verify is never
    /// contacted nor redirected to). Never logged; never accepted for viewing, publishing or
    /// the API.
    #[arg(long, env = "TSBRIDGE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServeArgs {
    /// Defaults for tests and embedding: loopback, ephemeral ports (and every other flag at its
    /// default, as the command line would give it).
    pub fn loopback() -> Self {
        let args = [
            "tsbridge",
            "serve",
            "--listen=127.0.0.1:0",
            "--ice-udp=127.0.0.1:0",
        ];
        match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Serve(a)) => a,
            other => unreachable!("the defaults parse: {other:?}"),
        }
    }
}

/// Whether a transcoder may run (`--audio-transcode`, `--video-transcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transcode {
    Auto,
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The TS file to push.
    pub file: PathBuf,
    /// Ingest URL, e.g. http://127.0.0.1:8889/ingest/cam1
    #[arg(long)]
    pub to: String,
    /// Start again at the end of the file, forever.
    #[arg(long = "loop")]
    pub looping: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// A TS file path, or an http:// URL of a TS stream (e.g. /streams/{s}.ts).
    pub input: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Stop reading after this many seconds of media (for endless inputs).
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub seconds: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_rate_is_checked_with_a_useful_message() {
        assert_eq!(parse_backlog_rate("25"), Ok(25.0));
        assert_eq!(parse_backlog_rate("2.5"), Ok(2.5));
        let too_low = parse_backlog_rate("0.5").unwrap_err();
        assert!(too_low.contains("between 1 and 100000 Mbit/s"), "{too_low}");
        assert!(parse_backlog_rate("fast").unwrap_err().contains("\"fast\""));
    }
}
