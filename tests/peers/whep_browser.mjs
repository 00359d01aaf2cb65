#!/usr/bin/env node
// tsbridge's headless-Chromium WHEP viewer: playwright-core drives Debian's /usr/bin/chromium.
//
//   node tests/peers/whep_browser.mjs URL [--seconds N] [--token T] [--screenshot F.png]
//        [--chromium PATH] [--chromium-arg ARG]...
//
// The page, served at the endpoint's origin, does what a browser player does: a recvonly
// video + audio RTCPeerConnection, the offer POSTed once ICE gathering is complete
// (non-trickle), the answer set, a <video> playing. After --seconds counted from the POST the
// script reads the page's getStats(), takes the screenshot, has the page DELETE the session and
// prints ONE JSON line (keys: tests/peers/README.md). Exit 0 when media was decoded, 1 when
// none was, 2 when the POST failed.
import { chromium } from 'playwright-core';

function parseArgs(argv) {
  const a = { url: null, seconds: 5, token: null, screenshot: null,
    chromium: '/usr/bin/chromium', chromiumArgs: [] };
  for (let i = 0; i < argv.length; i++) {
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
      return argv[++i];
    };
    switch (argv[i]) {
      case '--seconds': a.seconds = Number(value()); break;
      case '--token': a.token = value(); break;
      case '--screenshot': a.screenshot = value(); break;
      case '--chromium': a.chromium = value(); break;
      case '--chromium-arg': a.chromiumArgs.push(value()); break;
      default:
        if (argv[i].startsWith('-') || a.url) throw new Error(`unexpected argument ${argv[i]}`);
        a.url = argv[i];
    }
  }
  if (!a.url) throw new Error('usage: whep_browser.mjs URL [--seconds N] [--token T] [--screenshot F]');
  return a;
}

const now = () => performance.timeOrigin + performance.now(); // epoch ms, as in the page

// In the page, as a browser player does it: the offer once ICE gathering is complete, POSTed;
// the answer set. Times are epoch ms.
async function pageStart({ url, token }) {
  const pc = window.pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  const video = document.querySelector('video');
  const stream = new MediaStream();
  pc.ontrack = (e) => { stream.addTrack(e.track); video.srcObject = stream; };
  video.requestVideoFrameCallback(() => { window.firstFrame = performance.timeOrigin + performance.now(); });
  await pc.setLocalDescription();
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((done) => {
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
      setTimeout(done, 5000); // then offer what there is
    });
  }
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const tPost = performance.timeOrigin + performance.now();
  const r = await fetch(url, { method: 'POST', headers, body: pc.localDescription.sdp });
  const answer = await r.text();
  const out = { tPost, tAnswer: performance.timeOrigin + performance.now(), status: r.status };
  if (r.status === 201) {
    const location = r.headers.get('Location');
    out.location = location && new URL(location, url).href;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  } else {
    out.error = `POST answered ${r.status}: ${answer.slice(0, 300)}`;
  }
  return out;
}

// In the page: the figures the benches read.
async function pageStats() {
  const out = { firstFrame: window.firstFrame ?? null, connectionState: window.pc.connectionState };
  (await window.pc.getStats()).forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    if (s.kind === 'video') {
      out.video = { framesDecoded: s.framesDecoded, frameWidth: s.frameWidth,
        frameHeight: s.frameHeight, packetsLost: s.packetsLost, freezeCount: s.freezeCount,
        totalFreezesDuration: s.totalFreezesDuration, nackCount: s.nackCount, pliCount: s.pliCount };
    } else {
      out.audio = { totalSamplesReceived: s.totalSamplesReceived, audioLevel: s.audioLevel };
    }
  });
  return out;
}

// In the page: DELETE the session, then close. Closing first would let the server end the
// session on DTLS close_notify, and the DELETE would find nothing.
async function pageStop({ location, token }) {
  const r = await fetch(location, { method: 'DELETE', headers: token ? { Authorization: `Bearer ${token}` } : {} });
  window.pc.close();
  return r.status;
}

async function view(args, res, browser) {
  const page = await browser.newPage({ viewport: { width: 640, height: 360 } });
  // The page comes from the endpoint's own origin, so its POST and DELETE need no CORS.
  const pageUrl = new URL('/whep_browser_viewer', args.url).href;
  await page.route(pageUrl, (route) => route.fulfill({ contentType: 'text/html',
    body: '<body style="margin:0"><video autoplay playsinline ' +
      'style="width:640px;height:360px;background:#000"></video></body>' }));
  await page.goto(pageUrl);
  const start = await page.evaluate(pageStart, { url: args.url, token: args.token });
  res.http_status = start.status;
  res.post_to_answer_ms = +(start.tAnswer - start.tPost).toFixed(1);
  if (start.error) {
    res.errors.push(start.error);
    return;
  }
  if (!start.location) res.errors.push('201 without a Location header');
  try {
    await new Promise((r) => setTimeout(r, Math.max(0, start.tPost + args.seconds * 1000 - now())));
    const stats = await page.evaluate(pageStats);
    res.first_frame_ms = stats.firstFrame === null ? null : +(stats.firstFrame - start.tPost).toFixed(1);
    res.video = stats.video ?? null;
    res.audio = stats.audio ?? null;
    if (stats.connectionState !== 'connected') res.errors.push(`connection state ${stats.connectionState}`);
    if (args.screenshot) await page.locator('video').screenshot({ path: args.screenshot });
  } finally {
    if (start.location) {
      res.delete_status = await page.evaluate(pageStop, { location: start.location, token: args.token });
      if (res.delete_status !== 200 && res.delete_status !== 204) res.errors.push(`DELETE answered ${res.delete_status}`);
    }
  }
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(e.message);
    process.exit(64);
  }
  const res = { peer: 'chromium', url: args.url, browser: null, http_status: null,
    post_to_answer_ms: null, first_frame_ms: null, video: null, audio: null, errors: [] };
  let browser;
  try {
    browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: [
      '--no-sandbox', // runs as root in CI
      '--autoplay-policy=no-user-gesture-required',
      '--allow-loopback-in-peer-connection', // gather 127.0.0.1 host candidates
      '--disable-features=WebRtcHideLocalIpsWithMdns', // addresses, not <uuid>.local names
      ...args.chromiumArgs] });
    res.browser = browser.version();
    await view(args, res, browser);
  } catch (e) {
    res.errors.push(String(e?.stack ?? e));
  } finally {
    await browser?.close().catch(() => {});
  }
  // errors last, for whoever reads the line
  const { errors, ...rest } = res;
  console.log(JSON.stringify({ ...rest, errors }));
  const decoded = (res.video?.framesDecoded ?? 0) + (res.audio?.totalSamplesReceived ?? 0);
  process.exit(res.http_status !== 201 ? 2 : decoded > 0 ? 0 : 1);
}

main();
