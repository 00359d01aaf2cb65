//! Outside programs a test runs (ffmpeg, srt-live-transmit): present, or the test says loudly
//! that it skips — unless `TSBRIDGE_REQUIRE_PEERS` (set by `.ci/run`) makes it a failure.

use std::process::{Command, Stdio};

/// Whether `program` runs (`program {version_arg}` exits), else a loud skip line naming the
/// Debian package that has it; panics instead when `TSBRIDGE_REQUIRE_PEERS` is set.
pub fn have(test: &str, program: &str, version_arg: &str, package: &str) -> bool {
    let ok = Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("TSBRIDGE_REQUIRE_PEERS").is_none(),
            "{test}: {program} is required here (apt-get install {package})"
        );
        eprintln!("\n*** SKIPPED {test}: no {program} on PATH (apt-get install {package}) ***\n");
    }
    ok
}

/// `have` for what the SRT tests run: ffmpeg (with libsrt) and srt-live-transmit (whose
/// package, srt-tools, brings the libsrt tsbridge loads).
pub fn have_srt(test: &str) -> bool {
    have(test, "ffmpeg", "-version", "ffmpeg")
        && have(test, "srt-live-transmit", "-version", "srt-tools")
}

/// A free UDP port on 127.0.0.1 (bound once and let go: good enough for a test).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    s.local_addr().expect("bound").port()
}

/// `ffmpeg -re -stream_loop -1 -i testdata/{file} -c copy -f {format} {url}`: a live source
/// sent forever (killed when the child is dropped).
pub fn ffmpeg_loop(file: &str, format: &str, url: &str) -> tokio::process::Child {
    tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-stream_loop",
            "-1",
        ])
        .arg("-i")
        .arg(super::testdata(file))
        .args(["-c", "copy", "-f", format, url])
        .kill_on_drop(true)
        .spawn()
        .expect("start ffmpeg")
}

/// `srt-live-transmit` as an SRT listener on `srt_port` (AES with `passphrase`, if any)
/// relaying the UDP TS it gets on `udp_in` to its caller (killed on drop).
pub fn srt_live_transmit(
    udp_in: u16,
    srt_port: u16,
    passphrase: Option<&str>,
) -> tokio::process::Child {
    let srt = match passphrase {
        Some(p) => format!("srt://:{srt_port}?passphrase={p}"),
        None => format!("srt://:{srt_port}"),
    };
    tokio::process::Command::new("srt-live-transmit")
        .arg("-q")
        .arg(format!("udp://127.0.0.1:{udp_in}"))
        .arg(srt)
        .kill_on_drop(true)
        .spawn()
        .expect("start srt-live-transmit")
}
