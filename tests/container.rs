//! The container image (issue 23): the `Dockerfile`'s runtime image, around this build's
//! binary (`--target prebuilt`), on a Debian base made offline (`mmdebstrap`, as
//! docs/DESIGN.md says: no registry is reachable here), built and started with podman. The
//! test plays its demo with a WebRTC viewer, runs its HEALTHCHECK, and checks it runs as a
//! user other than root.
//!
//! Needs podman, runc and mmdebstrap (Debian packages); without them it says loudly that it
//! skipped, unless `TSBRIDGE_REQUIRE_PEERS` (set by `.ci/run`, which installs them) makes that
//! a failure. The base image is kept in podman's store: the first run takes a minute or two
//! to make it, later runs seconds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{whep_receive, StopWhen, WhepOptions};

const BASE: &str = "localhost/tsbridge-test-base:bookworm";
const IMAGE: &str = "localhost/tsbridge:test";

/// Podman with the settings these machines need (written by the test, nothing outside it):
/// runc (crun cannot set its limits here) and containers inheriting the host's ulimits.
struct Podman {
    conf: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n",
        )
        .unwrap();
        Podman { conf }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// Runs podman with `args`; panics with its output when it fails.
    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().expect("run podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn exists(&self, image: &str) -> bool {
        self.cmd()
            .args(["image", "exists", image])
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Removes the container when the test ends, passed or not.
struct Running<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .cmd()
            .args(["rm", "-f", "-t", "2", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn have_all(test: &str) -> bool {
    common::tools::have(test, "podman", "--version", "podman")
        && common::tools::have(test, "runc", "--version", "runc")
        && common::tools::have(test, "mmdebstrap", "--version", "mmdebstrap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_its_demo_to_a_webrtc_viewer() {
    let test = "the_image_serves_its_demo_to_a_webrtc_viewer";
    if !have_all(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tsbridge-container-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("context/testdata")).unwrap();
    let podman = Podman::new(&dir);
    if !podman.exists(BASE) {
        // Debian bookworm, minimal, from its packages: what `debian:bookworm-slim` is.
        let rootfs = dir.join("rootfs.tar");
        let made = Command::new("mmdebstrap")
            .args(["--variant=minbase", "--include=ca-certificates", "bookworm"])
            .arg(&rootfs)
            .output()
            .expect("run mmdebstrap");
        assert!(
            made.status.success(),
            "mmdebstrap: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        podman.run(&["import", rootfs.to_str().unwrap(), BASE]);
    }
    // The build context: the Dockerfile, the demo file and this build's binary, stripped (the
    // debug build's symbols are most of its size).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ctx = dir.join("context");
    std::fs::copy(root.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
    std::fs::copy(
        common::testdata("h264_opus.ts"),
        ctx.join("testdata/h264_opus.ts"),
    )
    .unwrap();
    let bin = ctx.join("tsbridge");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&bin)
        .arg(env!("CARGO_BIN_EXE_tsbridge"))
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(env!("CARGO_BIN_EXE_tsbridge"), &bin).unwrap();
    }
    podman.run(&[
        "build",
        "--format",
        "docker",
        "--target",
        "prebuilt",
        "--build-arg",
        &format!("BASE={BASE}"),
        "--build-arg",
        "EXTRA_PACKAGES=",
        "-t",
        IMAGE,
        ctx.to_str().unwrap(),
    ]);

    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let udp = common::tools::free_udp_port();
    let base = format!("http://127.0.0.1:{http}");
    let name = format!("tsbridge-test-{}", std::process::id());
    let running = Running {
        podman: &podman,
        name: name.clone(),
    };
    // Host networking: the viewer reaches the container's ICE port on loopback.
    podman.run(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-e",
        &format!("TSBRIDGE_HEALTH_URL={base}"),
        IMAGE,
        "serve",
        "--demo",
        "--listen",
        &format!("127.0.0.1:{http}"),
        "--ice-udp",
        &format!("127.0.0.1:{udp}"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = common::request("GET", &format!("{base}/readyz"), &[], b"").await;
        if r.as_ref().is_ok_and(|r| r.status == 200) {
            break;
        }
        if Instant::now() > deadline {
            let logs = podman.cmd().args(["logs", &name]).output().unwrap();
            panic!(
                "the container is not ready: {r:?}\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let r = whep_receive(
        &format!("{base}/whep/demo"),
        WhepOptions {
            seconds: 10.0,
            stop: StopWhen::VideoAus(50),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = common::h264_access_units(&r.video);
    assert!(aus.len() >= 50, "{} video access units", aus.len());
    assert!(!r.audio.is_empty(), "Opus from the demo");

    // The image's HEALTHCHECK (`tsbridge health`) passes, and it is not root inside.
    podman.run(&["healthcheck", "run", &name]);
    let id = podman.run(&["exec", &name, "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "10001");
    drop(running);
    let _ = podman.cmd().args(["rmi", "-f", IMAGE]).output();
    let _ = std::fs::remove_dir_all(&dir);
}
