//! WHEP server-sent events across a cluster on real processes (issue 24): a `redis-server` and
//! two `tsbridge` nodes (`common::cluster`). When `reconnect` is sent and when not is in
//! docs/DESIGN.md ("When `reconnect` is sent"): the node drains (SIGTERM), or the stream's
//! source stopped here and started on another node; a full node moves nobody.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{node, node_record, registered};
use common::redis::redis;
use common::sse::{events, subscribe};
use common::{request, TsbridgeProcess, WhepOptions, WhepSession};

/// Waits until `on` sees node `owner`'s record list `name` as owned.
async fn owned(on: &str, owner: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = node_record(on, owner).await;
        if r.as_ref()
            .and_then(|r| r["streams_owned"].as_array())
            .is_some_and(|s| s.iter().any(|x| x == name))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{owner} never owned {name}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `testdata/h264_opus.ts` pushed to `{base}/ingest/cam`, looping, until aborted.
fn push(base: &str) -> tokio::task::JoinHandle<Result<(), String>> {
    let url = format!("{base}/ingest/cam");
    tokio::spawn(async move {
        tsbridge::ingest::replay::push(&common::testdata("h264_opus.ts"), &url, true).await
    })
}

async fn viewer(on: &TsbridgeProcess, opts: &WhepOptions) -> WhepSession {
    let v = WhepSession::start(&on.whep_url("cam"), opts).await.unwrap();
    assert_eq!(v.status, 201, "{:?}", v.error_body);
    v
}

/// A SIGTERM'd node sends its viewers to the other node: `active`, the viewer count, then
/// `reconnect` with B's URL, in that order. A caller without the view token gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_sends_viewers_to_another_node_and_strangers_hear_nothing() {
    let test = "a_sigterm_sends_viewers_to_another_node_and_strangers_hear_nothing";
    let Some(redis) = redis(test).await else {
        return;
    };
    let a = node(
        &redis.url,
        &[
            "--replay",
            "cam=testdata/h264_opus.ts",
            "--view-token",
            "viewers-token",
        ],
    );
    let b = node(&redis.url, &[]);
    registered(&b.base, 2).await;
    owned(&b.base, &a.base, "cam").await;
    let auth = [("Authorization", "Bearer viewers-token")];
    let opts = WhepOptions {
        headers: vec![(auth[0].0.into(), auth[0].1.into())],
        ..Default::default()
    };
    let v = viewer(&a, &opts).await;
    let asked = br#"["active", "viewercount", "reconnect"]"#;
    // Without the token: no subscription, no event stream.
    let sub = format!("{}{}", a.base, common::sse::link(&v));
    let json = [("Content-Type", "application/json")];
    let r = request("POST", &sub, &json, asked).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let mut stream = subscribe(&a.base, &v, asked, &auth).await;
    let r = request("GET", &format!("{sub}?events=active"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let mut text = String::new();
    let got = events(&mut stream.body, &mut text, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "active", "{got:?}");
    assert_eq!(got[1].1, serde_json::json!({"viewercount": 1}), "{got:?}");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let got = events(&mut stream.body, &mut text, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].0, "reconnect", "{got:?}");
    assert_eq!(got[2].1["url"], b.whep_url("cam"), "{got:?}");
    v.finish().await;
}

/// The source moves: a viewer on A, where the source was, hears `inactive` when it stops, and
/// `reconnect` to B once a source for the name starts there (B has its claim), so it watches
/// where the source is rather than through a pull A would start for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_are_sent_to_the_node_their_source_moved_to() {
    let Some(redis) = redis("viewers_are_sent_to_the_node_their_source_moved_to").await else {
        return;
    };
    let a = node(&redis.url, &[]);
    let b = node(&redis.url, &[]);
    registered(&b.base, 2).await;
    let first = push(&a.base);
    owned(&b.base, &a.base, "cam").await;
    let v = viewer(&a, &WhepOptions::default()).await;
    let mut stream = subscribe(&a.base, &v, br#"["active", "inactive", "reconnect"]"#, &[]).await;
    let mut text = String::new();
    let got = events(&mut stream.body, &mut text, 1, Duration::from_secs(5)).await;
    assert_eq!(got.first().map(|e| e.0.as_str()), Some("active"), "{got:?}");
    first.abort();
    let got = events(&mut stream.body, &mut text, 2, Duration::from_secs(5)).await;
    assert_eq!(
        got.get(1).map(|e| e.0.as_str()),
        Some("inactive"),
        "{got:?}"
    );
    // B gets the name once A released its claim (within a tick): until then its PUT is 409.
    let deadline = Instant::now() + Duration::from_secs(8);
    let second = loop {
        let p = push(&b.base);
        tokio::time::sleep(Duration::from_millis(700)).await;
        if !p.is_finished() {
            break p;
        }
        assert!(Instant::now() < deadline, "B never got the name");
    };
    let got = events(&mut stream.body, &mut text, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].0, "reconnect", "{got:?}");
    assert_eq!(got[2].1["url"], b.whep_url("cam"), "{got:?}");
    v.finish().await;
    second.abort();
}

/// A full node (`--max-sessions 1`) moves none of its viewers: its one viewer hears no
/// `reconnect` and plays on while the next POST is sent to B (307).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_keeps_its_viewers_and_sends_new_ones_elsewhere() {
    let Some(redis) = redis("a_full_node_keeps_its_viewers_and_sends_new_ones_elsewhere").await
    else {
        return;
    };
    let a = node(
        &redis.url,
        &[
            "--replay",
            "cam=testdata/h264_opus.ts",
            "--max-sessions",
            "1",
        ],
    );
    let b = node(&redis.url, &[]);
    registered(&b.base, 2).await;
    owned(&b.base, &a.base, "cam").await;
    let v = viewer(&a, &WhepOptions::default()).await;
    let asked = br#"["active", "viewercount", "reconnect"]"#;
    let mut stream = subscribe(&a.base, &v, asked, &[]).await;
    let mut text = String::new();
    let got = events(&mut stream.body, &mut text, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    // A second viewer: A is full, B has room.
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let sdp = [("Content-Type", "application/sdp")];
    let r = request("POST", &a.whep_url("cam"), &sdp, offer.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 307, "{}", r.text());
    assert_eq!(r.header("location"), Some(b.whep_url("cam").as_str()));
    let before = v.collected().video.len();
    let got = events(&mut stream.body, &mut text, 3, Duration::from_secs(3)).await;
    assert!(
        got.iter().all(|(e, _)| e != "reconnect"),
        "a full node's viewer stays: {got:?}"
    );
    assert!(
        v.wait_until(Duration::from_secs(3), |c| c.video.len() > before + 30)
            .await,
        "and plays on"
    );
    v.finish().await;
}

/// `h264_opus.ts` with an SCTE-35 PID in its PMT (stream type 0x86, "CUEI" registration) and,
/// after the first packet of every 25th video PES (1 s), a splice_insert whose splice point is
/// 2 s after that PES's PTS: out of the network for 30 s, event ids 1000, 1001, …
fn with_cues(ts: &[u8], cue_pid: u16) -> Vec<u8> {
    use tsbridge::ts::scte35;
    let payload_at = |p: &[u8]| match p[3] >> 4 & 3 {
        1 => 4,
        3 => 5 + usize::from(p[4]),
        _ => 188,
    };
    let pid = |p: &[u8]| u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
    let (mut pmt_pid, mut video) = (None, None);
    let (mut out, mut cc, mut pes_seen, mut next_id) = (Vec::new(), 0u8, 0u32, 1000u32);
    for p in ts.chunks_exact(188) {
        let at = payload_at(p);
        let pusi = p[1] & 0x40 != 0;
        if pid(p) == 0 && pusi && pmt_pid.is_none() {
            let s = &p[at + 1 + usize::from(p[at])..];
            pmt_pid = Some(u16::from(s[10] & 0x1F) << 8 | u16::from(s[11]));
        }
        if Some(pid(p)) == pmt_pid && pusi {
            // The PMT section, with one more ES entry and a new CRC.
            let s = &p[at + 1 + usize::from(p[at])..];
            let len = 3 + (usize::from(s[1] & 0x0F) << 8 | usize::from(s[2]));
            let mut section = s[..len - 4].to_vec();
            let info = 12 + (usize::from(s[10] & 0x0F) << 8 | usize::from(s[11]));
            let mut es = &s[info..len - 4];
            while es.len() >= 5 {
                let es_pid = u16::from(es[1] & 0x1F) << 8 | u16::from(es[2]);
                if es[0] == 0x1B {
                    video = Some(es_pid);
                }
                es = &es[5 + (usize::from(es[3] & 0x0F) << 8 | usize::from(es[4]))..];
            }
            section.extend_from_slice(&[0x86, 0xE0 | (cue_pid >> 8) as u8, cue_pid as u8]);
            section.extend_from_slice(&[0xF0, 6, 0x05, 4, b'C', b'U', b'E', b'I']);
            let n = section.len() + 4 - 3;
            section[1] = section[1] & 0xF0 | (n >> 8) as u8;
            section[2] = n as u8;
            let crc = tsbridge::ts::crc32_mpeg2(&section);
            section.extend_from_slice(&crc.to_be_bytes());
            let mut q = p[..at].to_vec();
            q.push(0);
            q.extend_from_slice(&section);
            q.resize(188, 0xFF);
            out.extend_from_slice(&q);
            continue;
        }
        out.extend_from_slice(p);
        if Some(pid(p)) == video && pusi {
            pes_seen += 1;
            let h = &p[at..];
            if pes_seen % 25 != 0 || h[7] & 0x80 == 0 {
                continue;
            }
            let pts = (u64::from(h[9] >> 1 & 7) << 30)
                | (u64::from(h[10]) << 22)
                | (u64::from(h[11] >> 1) << 15)
                | (u64::from(h[12]) << 7)
                | u64::from(h[13] >> 1);
            let cmd = scte35::insert_command(next_id, true, Some(pts + 180_000), Some(2_700_000));
            next_id += 1;
            let mut q = vec![0x47, 0x40 | (cue_pid >> 8) as u8, cue_pid as u8, 0x10 | cc];
            cc = (cc + 1) & 0x0F;
            q.push(0);
            q.extend_from_slice(&scte35::section(0, 0x05, &cmd, &[]));
            q.resize(188, 0xFF);
            out.extend_from_slice(&q);
        }
    }
    assert!(next_id > 1000, "cues were put in");
    out
}

/// SCTE-35 (issue 21, point 5): a stream's splice_insert cues reach its viewers as WHEP
/// `scte35` events, with the time to the splice point, and are listed in `/streams/{s}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scte35_cues_reach_viewers_as_events() {
    let ts = std::fs::read(common::testdata("h264_opus.ts")).expect("testdata");
    let file = std::env::temp_dir().join(format!("tsbridge-scte35-{}.ts", std::process::id()));
    std::fs::write(&file, with_cues(&ts, 0x1F0)).unwrap();
    let mut args = tsbridge::config::ServeArgs::loopback();
    args.replays.push(tsbridge::config::Named {
        name: "ads".into(),
        value: file.clone(),
    });
    let server = tsbridge::server::Server::start(args).await.unwrap();
    let base = format!("http://{}", server.http_addr);
    let v = WhepSession::start(&format!("{base}/whep/ads"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(v.status, 201, "{:?}", v.error_body);
    let mut stream = subscribe(&base, &v, br#"["scte35"]"#, &[]).await;
    let mut text = String::new();
    let got = events(&mut stream.body, &mut text, 2, Duration::from_secs(6)).await;
    let _ = std::fs::remove_file(&file);
    assert!(got.len() >= 2, "two cues in 6 s (one a second): {got:?}");
    for (event, cue) in &got {
        assert_eq!(event, "scte35");
        assert_eq!(cue["command"], "splice_insert", "{cue}");
        assert_eq!(cue["pid"], 0x1F0);
        assert_eq!(cue["out_of_network"], true);
        assert_eq!(cue["duration_ms"], 30_000);
        assert!(cue["event_id"].as_u64().unwrap() >= 1000, "{cue}");
        assert!(cue["section_hex"].as_str().unwrap().starts_with("0xFC"));
        // Put 2 s after the PES it follows; the video before it is that PES or the one before.
        let in_ms = cue["in_ms"].as_i64().expect("in_ms");
        assert!((1900..=2100).contains(&in_ms), "{cue}");
    }
    assert_ne!(got[0].1["event_id"], got[1].1["event_id"]);
    let j = common::stream_json(server.http_addr, "ads").await;
    assert!(j["scte35"]["cues"].as_u64().unwrap() >= 2, "{j}");
    assert_eq!(j["scte35"]["recent"][0]["command"], "splice_insert", "{j}");
    let data = j["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == 0x1F0);
    assert!(data.is_some(), "the cue PID is listed: {j}");
}
