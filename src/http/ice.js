// ICE servers (--ice-server: the STUN ones are in the page; TURN ones, with credentials, come
// in the Link headers of an OPTIONS made with the viewer's or publisher's token) and trickle
// ICE (RFC 8840 PATCH) for candidates found after the offer went out. Shared by the player and
// the publish page.
const ICE_SERVERS = {{ICE_SERVERS}};

// The page's STUN servers and the endpoint's TURN servers for this token.
async function iceServers(endpoint, auth) {
  try {
    const res = await fetch(endpoint, { method: 'OPTIONS', headers: auth });
    return [...ICE_SERVERS, ...linkIceServers(res).filter(s => !ICE_SERVERS.some(k => k.urls === s.urls))];
  } catch (e) {
    return ICE_SERVERS;
  }
}

// `Link: <url>; rel="ice-server"; username="…"; credential="…"` → RTCIceServer objects.
function linkIceServers(res) {
  const out = [];
  for (const part of (res.headers.get('Link') || '').split(/,(?=\s*<)/)) {
    const m = part.match(/<([^>]+)>/);
    if (!m || !/rel="ice-server"/.test(part)) continue;
    const s = { urls: m[1] };
    const u = part.match(/username="([^"]*)"/), c = part.match(/credential="([^"]*)"/);
    if (u) s.username = u[1];
    if (c) s.credential = c[1];
    out.push(s);
  }
  return out;
}

// Candidates gathered after `offered` is set go to the session by PATCH once it exists.
function trickler(pc, auth) {
  const t = { url: null, etag: null, offered: false, queue: [] };
  const send = c => fetch(t.url, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': t.etag || '*', ...auth },
    body: c ? `a=mid:${c.sdpMid}\r\na=${c.candidate}\r\n` : 'a=end-of-candidates\r\n',
  }).catch(() => {});
  pc.addEventListener('icecandidate', e => {
    if (!t.offered || (e.candidate && !e.candidate.candidate)) return;
    if (t.url) send(e.candidate); else t.queue.push(e.candidate);
  });
  t.ready = (res, url) => {
    t.url = url;
    t.etag = res.headers.get('ETag');
    for (const c of t.queue.splice(0)) send(c);
    const extra = linkIceServers(res).filter(s => !ICE_SERVERS.some(k => k.urls === s.urls));
    if (extra.length) pc.setConfiguration({ ...pc.getConfiguration(), iceServers: [...ICE_SERVERS, ...extra] });
  };
  return t;
}
