//! The reference SRT library (Haivision's libsrt 1.5), loaded when first needed with `dlopen`.
//!
//! Why loaded at run time and not linked: `cargo build` must work on a machine without libsrt
//! (the README's commands, CI images, other platforms), and SRT is off unless `--srt-listen` or
//! `--srt-pull` is given. A missing library is then an error at startup that says what to
//! install, not a build failure. Why libsrt and not a Rust SRT: see docs/DESIGN.md (interop
//! with every peer is the point of SRT, and libsrt *is* what ffmpeg, OBS and
//! `srt-live-transmit` run).
//!
//! Everything `unsafe` about SRT is in this file: the function table, the statistics struct
//! (`CBytePerfMon` of libsrt 1.5's `srt.h`, field for field) and [`Socket`], which owns one
//! SRT socket and closes it when dropped. Calls block (libsrt's own threads do the protocol);
//! callers run them on their own threads.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use socket2::SockAddr;

pub use crate::stream::link::{SrtSendStats, SrtStats};

/// Library file names tried in order (Debian/Ubuntu: `libsrt1.5-openssl` has `libsrt.so.1.5`,
/// `libsrt1.5-gnutls` — which `srt-tools` and ffmpeg pull in — `libsrt-gnutls.so.1.5`).
const LIBRARIES: [&str; 5] = [
    "libsrt.so.1.5",
    "libsrt-gnutls.so.1.5",
    "libsrt-openssl.so.1.5",
    "libsrt.so",
    "libsrt.1.5.dylib",
];
/// An explicit path to the library, tried first.
pub const LIBRARY_ENV: &str = "TSBRIDGE_LIBSRT";

// Socket options (SRT_SOCKOPT of srt.h 1.5).
pub const SRTO_RCVSYN: c_int = 2;
pub const SRTO_RCVTIMEO: c_int = 14;
pub const SRTO_LATENCY: c_int = 23;
pub const SRTO_PASSPHRASE: c_int = 26;
pub const SRTO_CONNTIMEO: c_int = 36;
pub const SRTO_RCVLATENCY: c_int = 43;
pub const SRTO_STREAMID: c_int = 46;
pub const SRTO_TRANSTYPE: c_int = 50;
pub const SRTO_PEERIDLETIMEO: c_int = 55;
/// SRT_TRANSTYPE: live (TS-sized messages, TSBPD, too-late drop).
pub const SRTT_LIVE: c_int = 0;
// Error codes (1000 × major + minor).
const SRT_EASYNCRCV: c_int = 6002;
const SRT_ETIMEOUT: c_int = 6003;
// syslog levels, as libsrt's log handler reports them.
const LOG_ERR: c_int = 3;
const LOG_WARNING: c_int = 4;
// Rejection reasons (srt.h, access_control.h).
pub const SRT_REJ_BADSECRET: c_int = 10;
pub const SRT_REJX_BAD_REQUEST: c_int = 1400;
pub const SRT_REJX_UNAUTHORIZED: c_int = 1401;

/// `srt_listen_callback_fn`: called on libsrt's receive thread for each caller, before the
/// handshake completes; a negative return refuses the caller.
pub type ListenHook =
    extern "C" fn(*mut c_void, c_int, c_int, *const libc::sockaddr, *const c_char) -> c_int;

type LogHandler =
    extern "C" fn(*mut c_void, c_int, *const c_char, c_int, *const c_char, *const c_char);

/// The functions of libsrt tsbridge calls.
struct Api {
    startup: unsafe extern "C" fn() -> c_int,
    create_socket: unsafe extern "C" fn() -> c_int,
    setsockflag: unsafe extern "C" fn(c_int, c_int, *const c_void, c_int) -> c_int,
    getsockflag: unsafe extern "C" fn(c_int, c_int, *mut c_void, *mut c_int) -> c_int,
    bind: unsafe extern "C" fn(c_int, *const libc::sockaddr, c_int) -> c_int,
    listen: unsafe extern "C" fn(c_int, c_int) -> c_int,
    accept: unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut c_int) -> c_int,
    connect: unsafe extern "C" fn(c_int, *const libc::sockaddr, c_int) -> c_int,
    close: unsafe extern "C" fn(c_int) -> c_int,
    recvmsg: unsafe extern "C" fn(c_int, *mut c_char, c_int) -> c_int,
    sendmsg: unsafe extern "C" fn(c_int, *const c_char, c_int, c_int, c_int) -> c_int,
    getlasterror: unsafe extern "C" fn(*mut c_int) -> c_int,
    getlasterror_str: unsafe extern "C" fn() -> *const c_char,
    bstats: unsafe extern "C" fn(c_int, *mut PerfMon, c_int) -> c_int,
    getrejectreason: unsafe extern "C" fn(c_int) -> c_int,
    rejectreason_str: unsafe extern "C" fn(c_int) -> *const c_char,
    getsockstate: unsafe extern "C" fn(c_int) -> c_int,
    listen_callback: unsafe extern "C" fn(c_int, ListenHook, *mut c_void) -> c_int,
    setrejectreason: unsafe extern "C" fn(c_int, c_int) -> c_int,
    setloglevel: unsafe extern "C" fn(c_int),
    setloghandler: unsafe extern "C" fn(*mut c_void, LogHandler),
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// Loads libsrt once (and starts it); an error says what to install.
pub fn load() -> Result<(), String> {
    api().map(|_| ())
}

fn api() -> Result<&'static Api, String> {
    API.get_or_init(open).as_ref().map_err(Clone::clone)
}

/// libsrt, opened: `$TSBRIDGE_LIBSRT` if set, else the first of [`LIBRARIES`] found.
fn load_library() -> Result<*mut c_void, String> {
    let explicit = std::env::var(LIBRARY_ENV).ok();
    let names: Vec<String> = explicit
        .iter()
        .cloned()
        .chain(LIBRARIES.iter().map(|s| s.to_string()))
        .collect();
    let mut handle = std::ptr::null_mut();
    for name in &names {
        let Ok(c) = CString::new(name.as_str()) else {
            continue;
        };
        // SAFETY: dlopen with a NUL-terminated name; libsrt's initialisers have no
        // preconditions.
        handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            break;
        }
    }
    if handle.is_null() {
        Err(format!(
            "SRT needs libsrt 1.5 (Haivision's SRT library), which was not found as {}: \
             install it (Debian/Ubuntu: apt-get install libsrt1.5-openssl, or srt-tools) or \
             set {LIBRARY_ENV}=/path/to/libsrt.so",
            names.join(", ")
        ))
    } else {
        Ok(handle)
    }
}

fn open() -> Result<Api, String> {
    let handle = load_library()?;
    macro_rules! sym {
        ($name:literal, $t:ty) => {{
            // SAFETY: the symbol name is NUL-terminated; a non-null result is the function of
            // that name in libsrt 1.5, whose C signature the field's type repeats.
            let p = unsafe { libc::dlsym(handle, concat!($name, "\0").as_ptr().cast()) };
            if p.is_null() {
                return Err(format!(
                    "the libsrt found has no {}: tsbridge needs libsrt 1.5 or later",
                    $name
                ));
            }
            // SAFETY: see above; function pointers and data pointers have one size here.
            unsafe { std::mem::transmute::<*mut c_void, $t>(p) }
        }};
    }
    let api = Api {
        startup: sym!("srt_startup", unsafe extern "C" fn() -> c_int),
        create_socket: sym!("srt_create_socket", unsafe extern "C" fn() -> c_int),
        setsockflag: sym!(
            "srt_setsockflag",
            unsafe extern "C" fn(c_int, c_int, *const c_void, c_int) -> c_int
        ),
        getsockflag: sym!(
            "srt_getsockflag",
            unsafe extern "C" fn(c_int, c_int, *mut c_void, *mut c_int) -> c_int
        ),
        bind: sym!(
            "srt_bind",
            unsafe extern "C" fn(c_int, *const libc::sockaddr, c_int) -> c_int
        ),
        listen: sym!("srt_listen", unsafe extern "C" fn(c_int, c_int) -> c_int),
        accept: sym!(
            "srt_accept",
            unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut c_int) -> c_int
        ),
        connect: sym!(
            "srt_connect",
            unsafe extern "C" fn(c_int, *const libc::sockaddr, c_int) -> c_int
        ),
        close: sym!("srt_close", unsafe extern "C" fn(c_int) -> c_int),
        recvmsg: sym!(
            "srt_recvmsg",
            unsafe extern "C" fn(c_int, *mut c_char, c_int) -> c_int
        ),
        sendmsg: sym!(
            "srt_sendmsg",
            unsafe extern "C" fn(c_int, *const c_char, c_int, c_int, c_int) -> c_int
        ),
        getlasterror: sym!(
            "srt_getlasterror",
            unsafe extern "C" fn(*mut c_int) -> c_int
        ),
        getlasterror_str: sym!(
            "srt_getlasterror_str",
            unsafe extern "C" fn() -> *const c_char
        ),
        bstats: sym!(
            "srt_bstats",
            unsafe extern "C" fn(c_int, *mut PerfMon, c_int) -> c_int
        ),
        getrejectreason: sym!("srt_getrejectreason", unsafe extern "C" fn(c_int) -> c_int),
        rejectreason_str: sym!(
            "srt_rejectreason_str",
            unsafe extern "C" fn(c_int) -> *const c_char
        ),
        listen_callback: sym!(
            "srt_listen_callback",
            unsafe extern "C" fn(c_int, ListenHook, *mut c_void) -> c_int
        ),
        setrejectreason: sym!(
            "srt_setrejectreason",
            unsafe extern "C" fn(c_int, c_int) -> c_int
        ),
        getsockstate: sym!("srt_getsockstate", unsafe extern "C" fn(c_int) -> c_int),
        setloglevel: sym!("srt_setloglevel", unsafe extern "C" fn(c_int)),
        setloghandler: sym!(
            "srt_setloghandler",
            unsafe extern "C" fn(*mut c_void, LogHandler)
        ),
    };
    // SAFETY: plain calls into the library just loaded; the handler is a static function.
    unsafe {
        (api.setloghandler)(std::ptr::null_mut(), log_handler);
        (api.setloglevel)(LOG_WARNING);
        if (api.startup)() < 0 {
            return Err("libsrt failed to start (srt_startup)".into());
        }
    }
    Ok(api)
}

/// libsrt's warnings and errors, into our log (target `srt`). A wrong passphrase is only
/// seen here: libsrt refuses it inside the handshake, before any socket reaches us.
extern "C" fn log_handler(
    _: *mut c_void,
    level: c_int,
    _file: *const c_char,
    _line: c_int,
    _area: *const c_char,
    message: *const c_char,
) {
    if message.is_null() {
        return;
    }
    // SAFETY: libsrt passes a NUL-terminated message valid for the call.
    let msg = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    let msg = msg.trim_end();
    if msg.contains("BADSECRET") && msg.contains("rejected") {
        tracing::warn!(
            target: "srt",
            "SRT connection refused: wrong passphrase (the caller's passphrase does not match \
             the stream's own, if it was registered with one, else --srt-passphrase) [{msg}]"
        );
    } else if level <= LOG_ERR && !msg.contains("is already closed") {
        // (A closed listener's accept thread says "already closed" as it ends: our doing.)
        tracing::warn!(target: "srt", "libsrt: {msg}");
    } else {
        tracing::debug!(target: "srt", "libsrt: {msg}");
    }
}

/// libsrt's last error on this thread, as text.
fn last_error(what: &str) -> std::io::Error {
    let Ok(api) = api() else {
        return std::io::Error::other(format!("{what}: libsrt not loaded"));
    };
    // SAFETY: libsrt returns a NUL-terminated string owned by the thread's error state.
    let text = unsafe {
        let p = (api.getlasterror_str)();
        if p.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    std::io::Error::other(format!("{what}: {text}"))
}

/// libsrt's text for a rejection reason.
pub fn reject_reason_text(reason: c_int) -> String {
    let Ok(api) = api() else {
        return reason.to_string();
    };
    // SAFETY: returns a static NUL-terminated string (or null).
    unsafe {
        let p = (api.rejectreason_str)(reason);
        if p.is_null() {
            reason.to_string()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// What a receive gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// A message of this many bytes.
    Data(usize),
    /// Nothing within the socket's receive timeout.
    Timeout,
    /// The connection is gone (closed by the peer, broken, or never up).
    Closed(String),
}

/// One SRT socket, closed when dropped. Its calls may be made from any thread.
#[derive(Debug)]
pub struct Socket(c_int);

impl Socket {
    /// A new live-mode socket.
    pub fn new() -> std::io::Result<Socket> {
        let api = api().map_err(std::io::Error::other)?;
        // SAFETY: no arguments; returns -1 on failure.
        let s = unsafe { (api.create_socket)() };
        if s < 0 {
            return Err(last_error("srt_create_socket"));
        }
        let s = Socket(s);
        s.set_int(SRTO_TRANSTYPE, SRTT_LIVE)?;
        Ok(s)
    }

    pub fn id(&self) -> i32 {
        self.0
    }

    fn set(&self, opt: c_int, value: *const c_void, len: usize, what: &str) -> std::io::Result<()> {
        let api = api().map_err(std::io::Error::other)?;
        // SAFETY: `value` points to `len` readable bytes of the option's type.
        let r = unsafe { (api.setsockflag)(self.0, opt, value, len as c_int) };
        if r < 0 {
            return Err(last_error(what));
        }
        Ok(())
    }

    /// An `int` (or bool) option.
    pub fn set_int(&self, opt: c_int, v: c_int) -> std::io::Result<()> {
        self.set(
            opt,
            (&v as *const c_int).cast(),
            size_of::<c_int>(),
            "srt_setsockflag",
        )
    }

    /// A string option (passphrase, stream id).
    pub fn set_str(&self, opt: c_int, v: &str) -> std::io::Result<()> {
        self.set(opt, v.as_ptr().cast(), v.len(), "srt_setsockflag")
    }

    /// Receive latency (TSBPD delay) both ways.
    pub fn set_latency(&self, latency: Duration) -> std::io::Result<()> {
        self.set_int(
            SRTO_LATENCY,
            latency.as_millis().min(i32::MAX as u128) as c_int,
        )
    }

    /// The stream id the caller sent (listener side), or set before connecting.
    pub fn stream_id(&self) -> String {
        let Ok(api) = api() else {
            return String::new();
        };
        let mut buf = [0u8; 600];
        let mut len = buf.len() as c_int;
        // SAFETY: buf has `len` writable bytes; libsrt writes at most that and the length.
        let r =
            unsafe { (api.getsockflag)(self.0, SRTO_STREAMID, buf.as_mut_ptr().cast(), &mut len) };
        if r < 0 || len < 0 {
            return String::new();
        }
        let len = (len as usize).min(buf.len());
        String::from_utf8_lossy(&buf[..len])
            .trim_end_matches('\0')
            .to_owned()
    }

    pub fn bind(&self, addr: SocketAddr) -> std::io::Result<()> {
        let api = api().map_err(std::io::Error::other)?;
        let sa = SockAddr::from(addr);
        // SAFETY: a valid sockaddr of the length given.
        let r = unsafe { (api.bind)(self.0, sa.as_ptr().cast(), sa.len() as c_int) };
        if r < 0 {
            return Err(last_error(&format!("SRT bind {addr}")));
        }
        Ok(())
    }

    pub fn listen(&self, backlog: i32) -> std::io::Result<()> {
        let api = api().map_err(std::io::Error::other)?;
        // SAFETY: plain call.
        if unsafe { (api.listen)(self.0, backlog) } < 0 {
            return Err(last_error("srt_listen"));
        }
        Ok(())
    }

    /// Has `hook` look at each caller's stream id before its handshake completes (listener).
    /// # Safety
    /// `opaque` is handed to `hook` as it is, from libsrt's threads, for as long as the
    /// listener lives: what it points to must stay valid (and be `Sync`) that long.
    pub unsafe fn set_listen_hook(
        &self,
        hook: ListenHook,
        opaque: *mut c_void,
    ) -> std::io::Result<()> {
        let api = api().map_err(std::io::Error::other)?;
        // SAFETY: a static function; `opaque` is handed back to it as is (the caller keeps
        // what it points to alive for as long as the listener can call the hook).
        if unsafe { (api.listen_callback)(self.0, hook, opaque) } < 0 {
            return Err(last_error("srt_listen_callback"));
        }
        Ok(())
    }

    /// Waits for a caller; fails when the listener is closed.
    pub fn accept(&self) -> std::io::Result<(Socket, Option<SocketAddr>)> {
        let api = api().map_err(std::io::Error::other)?;
        // SAFETY: socket2 hands a zeroed storage large enough for any address and its size;
        // libsrt writes at most that many bytes and the length it wrote.
        let (s, peer) = unsafe {
            SockAddr::try_init(|storage, len| {
                let mut l = *len as c_int;
                let s = (api.accept)(self.0, storage.cast(), &mut l);
                *len = l.max(0) as libc::socklen_t;
                if s < 0 {
                    Err(last_error("srt_accept"))
                } else {
                    Ok(s)
                }
            })
        }?;
        Ok((Socket(s), peer.as_socket()))
    }

    /// Connects (caller mode); a refusal says libsrt's reason.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<()> {
        let api = api().map_err(std::io::Error::other)?;
        let sa = SockAddr::from(addr);
        // SAFETY: a valid sockaddr of the length given.
        let r = unsafe { (api.connect)(self.0, sa.as_ptr().cast(), sa.len() as c_int) };
        if r < 0 {
            let err = last_error(&format!("SRT connect {addr}"));
            // SAFETY: plain call.
            let reason = unsafe { (api.getrejectreason)(self.0) };
            if reason > 1 {
                return Err(std::io::Error::other(format!(
                    "{err} ({})",
                    reject_reason_text(reason)
                )));
            }
            return Err(err);
        }
        Ok(())
    }

    /// Receives one message (a live-mode payload, 1316 bytes from most senders).
    pub fn recv(&self, buf: &mut [u8]) -> Recv {
        let Ok(api) = api() else {
            return Recv::Closed("libsrt not loaded".into());
        };
        let len = buf.len().min(i32::MAX as usize) as c_int;
        // SAFETY: buf has `len` writable bytes.
        let n = unsafe { (api.recvmsg)(self.0, buf.as_mut_ptr().cast(), len) };
        if n >= 0 {
            return Recv::Data(n as usize);
        }
        // SAFETY: plain call; the errno out-pointer may be null.
        let code = unsafe { (api.getlasterror)(std::ptr::null_mut()) };
        if code == SRT_EASYNCRCV || code == SRT_ETIMEOUT {
            Recv::Timeout
        } else {
            Recv::Closed(last_error("srt_recvmsg").to_string())
        }
    }

    /// Sends one message (at most 1316 bytes in live mode).
    pub fn send(&self, data: &[u8]) -> std::io::Result<()> {
        let api = api().map_err(std::io::Error::other)?;
        // SAFETY: data has `len` readable bytes; ttl -1 (forever), in order.
        let n = unsafe { (api.sendmsg)(self.0, data.as_ptr().cast(), data.len() as c_int, -1, 1) };
        if n < 0 {
            return Err(last_error("srt_sendmsg"));
        }
        Ok(())
    }

    /// Whether the connection is up (SRTS_CONNECTED).
    pub fn is_connected(&self) -> bool {
        const SRTS_CONNECTED: c_int = 5;
        // SAFETY: plain call with our socket id.
        api().is_ok_and(|api| unsafe { (api.getsockstate)(self.0) } == SRTS_CONNECTED)
    }

    /// libsrt's figures of the connection since it began.
    fn perf(&self) -> Option<PerfMon> {
        let api = api().ok()?;
        // SAFETY: PerfMon is plain data; zero is a valid value for every field.
        let mut p: PerfMon = unsafe { std::mem::zeroed() };
        // SAFETY: libsrt fills the struct (the layout of libsrt 1.5's CBytePerfMon).
        if unsafe { (api.bstats)(self.0, &mut p, 0) } < 0 {
            return None;
        }
        Some(p)
    }

    /// The sender side's figures since the connection began (a reader's connection).
    pub fn send_stats(&self) -> Option<SrtSendStats> {
        let p = self.perf()?;
        let n = |v: i64| v.max(0) as u64;
        Some(SrtSendStats {
            rtt_ms: p.ms_rtt,
            bandwidth_mbps: p.mbps_bandwidth,
            send_rate_mbps: p.mbps_send_rate,
            packets_sent: n(p.pkt_sent_total),
            bytes_sent: p.byte_sent_total,
            lost: n(p.pkt_snd_loss_total.into()),
            retransmitted: n(p.pkt_retrans_total.into()),
            dropped: n(p.pkt_snd_drop_total.into()),
            send_buffer_ms: n(p.ms_snd_buf.into()),
            latency_ms: n(p.ms_snd_tsbpd_delay.into()),
        })
    }

    /// The connection's statistics since it began.
    pub fn stats(&self) -> Option<SrtStats> {
        let p = self.perf()?;
        Some(SrtStats {
            rtt_ms: p.ms_rtt,
            bandwidth_mbps: p.mbps_bandwidth,
            recv_rate_mbps: p.mbps_recv_rate,
            send_rate_mbps: p.mbps_send_rate,
            packets_received: p.pkt_recv_total.max(0) as u64,
            packets_sent: p.pkt_sent_total.max(0) as u64,
            lost: p.pkt_rcv_loss_total.max(0) as u64,
            retransmitted: (p.pkt_rcv_retrans.max(0) as u64).max(p.pkt_retrans_total.max(0) as u64),
            dropped: p.pkt_rcv_drop_total.max(0) as u64 + p.pkt_snd_drop_total.max(0) as u64,
            undecrypted: p.pkt_rcv_undecrypt_total.max(0) as u64,
            receive_buffer_ms: p.ms_rcv_buf.max(0) as u64,
            latency_ms: p.ms_rcv_tsbpd_delay.max(p.ms_snd_tsbpd_delay).max(0) as u64,
        })
    }
}

/// Options for a caller's socket inside a [`ListenHook`] (it owns no [`Socket`] yet).
pub struct Pending(pub c_int);

impl Pending {
    /// The rejection reason the caller is told (a `SRT_REJX_*` code).
    pub fn reject(&self, reason: c_int) {
        if let Ok(api) = api() {
            // SAFETY: plain call with the id libsrt handed the hook.
            unsafe { (api.setrejectreason)(self.0, reason) };
        }
    }

    /// Its passphrase (settable until the handshake completes; libsrt takes 10 to 79 bytes).
    pub fn set_passphrase(&self, passphrase: &str) -> std::io::Result<()> {
        let api = api().map_err(std::io::Error::other)?;
        // SAFETY: a string option: its bytes and their length.
        let r = unsafe {
            (api.setsockflag)(
                self.0,
                SRTO_PASSPHRASE,
                passphrase.as_ptr().cast(),
                passphrase.len() as c_int,
            )
        };
        if r < 0 {
            return Err(last_error("srt_setsockflag"));
        }
        Ok(())
    }

    /// Its receive latency (settable until the handshake completes).
    pub fn set_latency(&self, latency: Duration) -> std::io::Result<()> {
        let api = api().map_err(std::io::Error::other)?;
        let ms = latency.as_millis().min(i32::MAX as u128) as c_int;
        // SAFETY: an int option, its size given.
        let r = unsafe {
            (api.setsockflag)(
                self.0,
                SRTO_LATENCY,
                (&ms as *const c_int).cast(),
                size_of::<c_int>() as c_int,
            )
        };
        if r < 0 {
            return Err(last_error("srt_setsockflag"));
        }
        Ok(())
    }
}

/// Reads the arguments of a [`ListenHook`] call: the caller's address and stream id.
///
/// # Safety
/// `peer` is null or a valid sockaddr, `stream_id` null or NUL-terminated (as libsrt passes).
pub unsafe fn hook_args(
    peer: *const libc::sockaddr,
    stream_id: *const c_char,
) -> (Option<SocketAddr>, String) {
    let id = if stream_id.is_null() {
        String::new()
    } else {
        // SAFETY: the caller's contract.
        unsafe { CStr::from_ptr(stream_id) }
            .to_string_lossy()
            .into_owned()
    };
    let addr = if peer.is_null() {
        None
    } else {
        // SAFETY: the caller's contract; the family says how many bytes there are.
        let family = unsafe { (*peer).sa_family } as c_int;
        let len = match family {
            libc::AF_INET => size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => size_of::<libc::sockaddr_in6>(),
            _ => 0,
        };
        (len > 0)
            .then(|| {
                // SAFETY: socket2 hands storage for any address; `len` bytes of it are read.
                unsafe {
                    SockAddr::try_init(|storage, l| {
                        std::ptr::copy_nonoverlapping(peer.cast::<u8>(), storage.cast::<u8>(), len);
                        *l = len as libc::socklen_t;
                        Ok(())
                    })
                }
                .ok()
                .and_then(|(_, a)| a.as_socket())
            })
            .flatten()
    };
    (addr, id)
}

/// Closes the socket with this id (to end a blocked `accept` from another thread; closing an
/// id twice is an error libsrt reports and ignores).
pub fn close_id(id: i32) {
    if let Ok(api) = api() {
        // SAFETY: plain call with an integer id.
        unsafe { (api.close)(id) };
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: closing our own socket id once; a blocked accept/recv on it returns.
            unsafe { (api.close)(self.0) };
        }
    }
}

/// `CBytePerfMon` of libsrt 1.5's `srt.h`, field for field (the names in snake case).
#[repr(C)]
struct PerfMon {
    ms_time_stamp: i64,
    pkt_sent_total: i64,
    pkt_recv_total: i64,
    pkt_snd_loss_total: c_int,
    pkt_rcv_loss_total: c_int,
    pkt_retrans_total: c_int,
    pkt_sent_ack_total: c_int,
    pkt_recv_ack_total: c_int,
    pkt_sent_nak_total: c_int,
    pkt_recv_nak_total: c_int,
    us_snd_duration_total: i64,
    pkt_snd_drop_total: c_int,
    pkt_rcv_drop_total: c_int,
    pkt_rcv_undecrypt_total: c_int,
    byte_sent_total: u64,
    byte_recv_total: u64,
    byte_rcv_loss_total: u64,
    byte_retrans_total: u64,
    byte_snd_drop_total: u64,
    byte_rcv_drop_total: u64,
    byte_rcv_undecrypt_total: u64,
    pkt_sent: i64,
    pkt_recv: i64,
    pkt_snd_loss: c_int,
    pkt_rcv_loss: c_int,
    pkt_retrans: c_int,
    pkt_rcv_retrans: c_int,
    pkt_sent_ack: c_int,
    pkt_recv_ack: c_int,
    pkt_sent_nak: c_int,
    pkt_recv_nak: c_int,
    mbps_send_rate: f64,
    mbps_recv_rate: f64,
    us_snd_duration: i64,
    pkt_reorder_distance: c_int,
    pkt_rcv_avg_belated_time: f64,
    pkt_rcv_belated: i64,
    pkt_snd_drop: c_int,
    pkt_rcv_drop: c_int,
    pkt_rcv_undecrypt: c_int,
    byte_sent: u64,
    byte_recv: u64,
    byte_rcv_loss: u64,
    byte_retrans: u64,
    byte_snd_drop: u64,
    byte_rcv_drop: u64,
    byte_rcv_undecrypt: u64,
    us_pkt_snd_period: f64,
    pkt_flow_window: c_int,
    pkt_congestion_window: c_int,
    pkt_flight_size: c_int,
    ms_rtt: f64,
    mbps_bandwidth: f64,
    byte_avail_snd_buf: c_int,
    byte_avail_rcv_buf: c_int,
    mbps_max_bw: f64,
    byte_mss: c_int,
    pkt_snd_buf: c_int,
    byte_snd_buf: c_int,
    ms_snd_buf: c_int,
    ms_snd_tsbpd_delay: c_int,
    pkt_rcv_buf: c_int,
    byte_rcv_buf: c_int,
    ms_rcv_buf: c_int,
    ms_rcv_tsbpd_delay: c_int,
    pkt_snd_filter_extra_total: c_int,
    pkt_rcv_filter_extra_total: c_int,
    pkt_rcv_filter_supply_total: c_int,
    pkt_rcv_filter_loss_total: c_int,
    pkt_snd_filter_extra: c_int,
    pkt_rcv_filter_extra: c_int,
    pkt_rcv_filter_supply: c_int,
    pkt_rcv_filter_loss: c_int,
    pkt_reorder_tolerance: c_int,
    pkt_sent_unique_total: i64,
    pkt_recv_unique_total: i64,
    byte_sent_unique_total: u64,
    byte_recv_unique_total: u64,
    pkt_sent_unique: i64,
    pkt_recv_unique: i64,
    byte_sent_unique: u64,
    byte_recv_unique: u64,
}
