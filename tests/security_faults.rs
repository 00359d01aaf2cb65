//! Faults of a cluster on real processes (issue 20): a `redis-server` and three `tsbridge`
//! nodes. A owns `cam` (a looping `--replay`), the edge B pulls it for a webrtc-rs viewer, C
//! stands by. Then A dies (`SIGKILL`: the kernel closes its sockets) or its host stops
//! answering (`SIGSTOP`: the kernel still accepts connections and acknowledges data, nothing
//! reads or writes, the claim in Redis is no longer refreshed). B's viewer sees the source go
//! (no video), keeps its session for B's `--source-grace`, and plays on — same session, RTP
//! continuing — once the source is back: on C (a publisher reconnecting elsewhere) or on A (a
//! host answering again). When the viewer leaves, B's pull ends within its linger: nothing is
//! left pulling. Each test prints its figures: from the fault to B's pull ending, to video
//! again.
//!
//! `tests/security_pull.rs` freezes an owner behind a TCP proxy in-process (the owner keeps
//! its claim); here the owner's whole process stops, claim included.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cluster::{node, node_record, registered, CLUSTER_TOKEN};
use common::redis::{redis, Redis};
use common::{request, TsbridgeProcess, WhepOptions, WhepSession};
use serde_json::{json, Value};
use tsbridge::cluster::pull::LINGER;

/// B's `--source-grace` (s): its viewers wait this long for a source that ended.
const GRACE: u64 = 8;
/// The pull's progress timeout: 5 s without a byte ends it (`cluster/pull.rs`).
const SILENCE: Duration = Duration::from_secs(5);
/// What the tests allow it on a slow, shared machine.
const SILENCE_BOUND: Duration = Duration::from_secs(10);

/// Redis, A (owns `cam`), B (the edge, `--source-grace 8`) and C, all registered, A's claim
/// on `cam` in Redis. Fields drop in order: Redis first, then the nodes.
struct Nodes {
    _redis: Redis,
    a: TsbridgeProcess,
    b: TsbridgeProcess,
    c: TsbridgeProcess,
}

async fn three_nodes(test: &str) -> Option<Nodes> {
    let redis = redis(test).await?;
    let a = node(&redis.url, &["--replay", "cam=testdata/h264_opus.ts"]);
    let b = node(&redis.url, &["--source-grace", &GRACE.to_string()]);
    let c = node(&redis.url, &[]);
    eprintln!(
        "A {} (pid {}), B {} (pid {}), C {} (pid {})",
        a.base,
        a.pid(),
        b.base,
        b.pid(),
        c.base,
        c.pid()
    );
    registered(&b.base, 3).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let owned = node_record(&b.base, &a.base).await;
        if owned.is_some_and(|r| r["streams_owned"] == json!(["cam"])) {
            break;
        }
        assert!(Instant::now() < deadline, "A never claimed cam");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(Nodes {
        _redis: redis,
        a,
        b,
        c,
    })
}

/// A viewer of `cam` on node `on`, playing.
async fn plays_on(on: &TsbridgeProcess) -> WhepSession {
    let v = WhepSession::start(&on.whep_url("cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(v.status, 201, "{:?}", v.error_body);
    assert!(
        v.wait_until(Duration::from_secs(15), |c| c.video.len() > 60)
            .await,
        "a viewer on the edge plays"
    );
    v
}

/// `GET {base}/streams/cam` as a node asks it (the owner's URL included on an edge), if the
/// node has the stream.
async fn cam_on(base: &str) -> Option<Value> {
    let auth = format!("Bearer {CLUSTER_TOKEN}");
    let r = request(
        "GET",
        &format!("{base}/streams/cam"),
        &[("Authorization", &auth)],
        b"",
    )
    .await
    .unwrap();
    (r.status == 200).then(|| serde_json::from_slice(&r.body).unwrap())
}

/// A counter of `GET {base}/metrics`.
async fn metric(base: &str, name: &str) -> u64 {
    let r = request("GET", &format!("{base}/metrics"), &[], b"")
        .await
        .unwrap();
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The first line of `p`'s log after `since` that contains `needle`, waited for `within`:
/// when it was read, and what follows `needle` in it.
async fn logged(
    p: &TsbridgeProcess,
    since: Instant,
    needle: &str,
    within: Duration,
) -> Option<(Instant, String)> {
    let deadline = Instant::now() + within;
    loop {
        if let Some((at, line)) = p.logged_after(since, needle) {
            let rest = line.split_once(needle).map_or("", |(_, r)| r);
            return Some((at, rest.trim().to_owned()));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No video reaches the viewer while no source feeds B: its count of video packets stays the
/// same for a second, from a second after `since` (what was in flight has arrived).
async fn stalled(v: &WhepSession, since: Instant) {
    tokio::time::sleep_until((since + Duration::from_secs(1)).into()).await;
    let n = v.collected().video.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = v.collected().video.len();
    assert_eq!(m, n, "video went on arriving without a source");
}

/// A publisher of `cam` reconnecting to node `to` (`tsbridge replay --to …/ingest/cam
/// --loop`, a child process, killed on drop) until `to` takes it — a 409 ends it while the
/// claim of the node the source left still lives in Redis (up to 5 s after its last refresh).
/// Returns it and when it was taken.
async fn publish_on(to: &TsbridgeProcess) -> (tokio::process::Child, Instant) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tsbridge"))
            .args(["replay", "testdata/h264_opus.ts", "--loop", "--to"])
            .arg(format!("{}/ingest/cam", to.base))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tsbridge replay");
        let tried = Instant::now();
        while tried.elapsed() < Duration::from_secs(3) {
            if child.try_wait().unwrap().is_some() {
                break; // refused
            }
            if cam_on(&to.base)
                .await
                .is_some_and(|s| s["source"] == "live")
            {
                return (child, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill().await;
        assert!(Instant::now() < deadline, "{} never took cam", to.base);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Video from the next source: more than `more` packets arrive within `within` after
/// `ended` (when B's pull ended), in the same session (its SSRC), and RTP goes on across the
/// change of source — sequence numbers and time continue where they were, and few gaps in
/// all (as `tests/cluster.rs` checks). Returns when its first packet arrived.
///
/// The last access unit of the old source comes out when B's pull ends (its end is only known
/// then); the next source's first bytes come no sooner than the edge's retry (250 ms) later.
async fn plays_again(v: &WhepSession, ended: Instant, more: usize, within: Duration) -> Instant {
    let after = ended + Duration::from_millis(200);
    assert!(
        v.wait_until(within, |c| c.video.iter().filter(|p| p.at > after).count()
            > more)
            .await,
        "no video again within {within:?} (the session ended, or B never pulled the source \
         again)"
    );
    let video = v.collected().video;
    let from = video.iter().position(|p| p.at > after).expect("waited for");
    let (last, next) = (&video[from - 1], &video[from]);
    assert_eq!(next.ssrc, video[0].ssrc, "the same stream of RTP");
    // A new RTP stream would start anywhere (random sequence number and time offset).
    let seq_step = next.seq.wrapping_sub(last.seq);
    assert!(
        (1..=5).contains(&seq_step),
        "sequence numbers continue: a step of {seq_step}"
    );
    let ts_step = next.ts.wrapping_sub(last.ts);
    assert!(
        ts_step <= 30 * 90_000,
        "RTP time goes on: a step of {ts_step} (90 kHz)"
    );
    let gaps = video
        .windows(2)
        .filter(|w| w[1].seq != w[0].seq.wrapping_add(1))
        .count();
    assert!(gaps <= 3, "sequence numbers continue: {gaps} gaps");
    eprintln!(
        "the change of source: {:?} without video; RTP sequence +{seq_step}, time +{ts_step} \
         (90 kHz)",
        next.at - last.at
    );
    next.at
}

/// The viewer leaves (`DELETE`): B's pull ends within its linger (and a tick for its record in
/// Redis), and the node it pulled from has no TS reader left. Returns how long it took.
async fn no_pull_left_behind(
    b: &TsbridgeProcess,
    from: &TsbridgeProcess,
    v: WhepSession,
) -> Duration {
    let done = v.finish().await;
    assert!(
        matches!(done.delete_status, Some(200..=299)),
        "DELETE: {:?}",
        done.delete_status
    );
    let left = Instant::now();
    let deadline = left + LINGER + Duration::from_secs(6);
    loop {
        let pulled = node_record(&b.base, &b.base)
            .await
            .map(|r| r["streams_pulled"].clone());
        let readers = cam_on(&from.base).await.map(|s| s["ts_readers"].clone());
        if pulled == Some(json!([])) && readers == Some(json!(0)) {
            return left.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "a pull left behind {:?} after the last viewer left: B pulls {pulled:?}, the \
             source's node has {readers:?} TS readers",
            left.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A node's process stopped (`SIGSTOP`), continued (`SIGCONT`) when dropped, so nothing is
/// left stopped however the test ends.
struct Stopped(i32);

impl Stopped {
    fn new(p: &TsbridgeProcess) -> Stopped {
        let pid = p.pid() as i32;
        assert_eq!(signal(pid, libc::SIGSTOP), 0, "SIGSTOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

fn signal(pid: i32, sig: i32) -> i32 {
    // SAFETY: plain kill(2) on our own child (not reaped while this runs).
    unsafe { libc::kill(pid, sig) }
}

/// The owner dies (`SIGKILL`) while B pulls from it; the source comes back on C (its
/// publisher reconnecting there) and B's viewer plays on in the same session.
///
/// What fails if the behaviour breaks:
/// - B's pull not ending when its owner's sockets close: no "pull ended" in B's log;
/// - the edge not looking the owner up again after a pull ended (or not while its claim
///   expires): no video again, and B's `owner` is not C;
/// - B ending its viewers with the source instead of after `--source-grace`, or starting
///   them on a new RTP stream: no video in the same session, or a jump in SSRC, sequence
///   numbers or time at the change;
/// - a pull (task, entry in `pulled`, reader on C) surviving its last viewer: the last check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_follows_its_source_to_another_node_when_the_owner_is_killed() {
    let Some(mut n) = three_nodes("an_edge_follows_its_source_when_the_owner_is_killed").await
    else {
        return;
    };
    let viewer = plays_on(&n.b).await;
    let pulls = metric(&n.b.base, "tsbridge_cluster_pulls_total").await;
    let killed = Instant::now();
    n.a.kill();
    let (ended, why) = logged(&n.b, killed, "cluster: pull ended", SILENCE_BOUND)
        .await
        .expect("B's pull from a killed owner never ended");
    stalled(&viewer, killed).await;
    let (_publisher, taken) = publish_on(&n.c).await;
    let again = plays_again(&viewer, ended, 60, Duration::from_secs(GRACE)).await;
    let on_b = cam_on(&n.b.base).await.expect("B has cam");
    assert_eq!(on_b["owner"], n.c.base.as_str(), "{on_b}");
    assert_eq!(on_b["source"], "pull", "{on_b}");
    let tries = metric(&n.b.base, "tsbridge_cluster_pulls_total").await - pulls;
    let lingered = no_pull_left_behind(&n.b, &n.c, viewer).await;
    eprintln!(
        "SIGKILL: B's pull ended after {:?} ({why}); C took the name after {:?}; video again \
         on B after {:?} ({:?} after C took it; {tries} pulls started by B meanwhile); no pull \
         on B {lingered:?} after the viewer left",
        ended - killed,
        taken - killed,
        again - killed,
        again.saturating_duration_since(taken),
    );
}

/// The owner's host stops answering (`SIGSTOP`) while B pulls from it, and stays stopped;
/// the source comes back on C. B's pull ends by its progress timeout and B follows the
/// source to C; when A answers again it does not take the name back.
///
/// What fails if the behaviour breaks:
/// - no progress timeout (or TCP keepalive alone: a stopped host's kernel acknowledges
///   them): the pull from A never ends, so B never looks for the owner again and its viewer
///   never plays C's source — the "pull ended" bound and the video-again check;
/// - a timeout that fires before 5 s of silence: the lower bound;
/// - the rest as for a killed owner (same session, RTP continuing, owner C, nothing left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_leaves_an_owner_that_stops_answering_and_follows_its_source() {
    let Some(n) = three_nodes("an_edge_leaves_an_owner_that_stops_answering").await else {
        return;
    };
    let viewer = plays_on(&n.b).await;
    let stopped_at = Instant::now();
    let stopped = Stopped::new(&n.a);
    stalled(&viewer, stopped_at).await;
    // C takes the name once A's claim expires (a stopped A cannot refresh it).
    let (_publisher, taken) = publish_on(&n.c).await;
    let (ended, why) = logged(&n.b, stopped_at, "cluster: pull ended", SILENCE_BOUND)
        .await
        .expect("B's pull from a stopped owner never ended (no progress timeout?)");
    let silence = ended - stopped_at;
    assert!(why.contains(&n.a.base), "{why}");
    assert!(
        silence >= SILENCE - Duration::from_secs(1),
        "ended before 5 s of silence: {silence:?}"
    );
    let again = plays_again(&viewer, ended, 60, Duration::from_secs(GRACE)).await;
    let on_b = cam_on(&n.b.base).await.expect("B has cam");
    assert_eq!(on_b["owner"], n.c.base.as_str(), "{on_b}");
    // A answers again (its replay still running): C keeps the name, B's viewer plays on.
    drop(stopped);
    let before = viewer.collected().video.len();
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video.len() > before + 60)
            .await,
        "B's viewer plays on once A answers again"
    );
    let on_b = cam_on(&n.b.base).await.expect("B has cam");
    assert_eq!(on_b["owner"], n.c.base.as_str(), "{on_b}");
    let lingered = no_pull_left_behind(&n.b, &n.c, viewer).await;
    eprintln!(
        "SIGSTOP, source to C: B's pull ended after {silence:?} ({why}); C took the name after \
         {:?}; video again on B after {:?}; no pull on B {lingered:?} after the viewer left",
        taken - stopped_at,
        again - stopped_at,
    );
}

/// The owner's host stops answering (`SIGSTOP`) and answers again (`SIGCONT`) after B's pull
/// ended: B pulls from A again and its viewer plays on in the same session.
///
/// What fails if the behaviour breaks:
/// - no progress timeout: no "pull ended" within the bound (the video-again check alone
///   would not catch it: the old connection carries data again once A continues);
/// - an edge that gives up on an owner after a failed pull (no lookup again, or not while
///   the owner's claim lapsed and came back): no video again;
/// - the session not surviving the gap (B's grace), a new RTP stream, a pull left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_plays_again_when_a_stopped_owner_answers_again() {
    let Some(n) = three_nodes("an_edge_plays_again_when_a_stopped_owner_answers_again").await
    else {
        return;
    };
    let viewer = plays_on(&n.b).await;
    let stopped_at = Instant::now();
    let stopped = Stopped::new(&n.a);
    stalled(&viewer, stopped_at).await;
    let (ended, why) = logged(&n.b, stopped_at, "cluster: pull ended", SILENCE_BOUND)
        .await
        .expect("B's pull from a stopped owner never ended (no progress timeout?)");
    let silence = ended - stopped_at;
    assert!(
        silence >= SILENCE - Duration::from_secs(1),
        "ended before 5 s of silence: {silence:?}"
    );
    let continued = Instant::now();
    drop(stopped);
    let again = plays_again(&viewer, ended, 60, Duration::from_secs(GRACE)).await;
    let on_b = cam_on(&n.b.base).await.expect("B has cam");
    assert_eq!(on_b["owner"], n.a.base.as_str(), "{on_b}");
    let lingered = no_pull_left_behind(&n.b, &n.a, viewer).await;
    eprintln!(
        "SIGSTOP, SIGCONT: B's pull ended after {silence:?} ({why}); A continued after {:?}; \
         video again on B after {:?} ({:?} after SIGCONT); no pull on B {lingered:?} after the \
         viewer left",
        continued - stopped_at,
        again - stopped_at,
        again.saturating_duration_since(continued),
    );
}
