//! The gateway's HTTP surface (axum): health, Prometheus metrics, the call
//! API and pages, the agents' screen-pop, hot reload, and the browser
//! caller's page and signalling.
//!
//! Routes:
//! - `GET /healthz` — 200 while serving, 503 while draining for shutdown.
//! - `GET /metrics` — Prometheus text format.
//! - `GET /api/calls`, `GET /api/calls/{id}` — JSON (admin bearer token).
//! - `POST /api/reload` — reload `sip-config/` for new calls (admin).
//! - `GET /calls/{id}?key=K` — the call's page for the agent (the `Call-Info`
//!   link carries the key; the admin token opens it too).
//! - `GET /agent?ext=1001` — the screen-pop page; `GET /agent/events?ext=1001`
//!   its server-sent events.
//! - `GET /call` — the browser caller's page (`?autostart=1` calls on load,
//!   `?raw=1` turns the browser's audio processing off); `POST /call/offer`
//!   takes its SDP offer and answers with the gateway's SDP.

use super::board::CallBoard;
use crate::replay::report::esc;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

/// Why a browser's offer was not answered.
#[derive(Debug)]
pub enum OfferRefused {
    /// The offer is unusable (HTTP 400).
    Bad(String),
    /// Too many browser calls are being set up right now (HTTP 503).
    Busy(String),
}

/// A boxed future, for the [`Control`] hooks.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the HTTP surface asks of the running gateway.
pub trait Control: Send + Sync + 'static {
    /// Reload the configuration for new calls; `Err` carries the
    /// `config check` messages (the old configuration stays).
    fn reload(&self) -> Result<String, Vec<String>>;
    /// True once shutdown began (new calls are refused).
    fn draining(&self) -> bool;
    /// The gauges read at scrape time (ASR queue, calls in set-up,
    /// descriptors, bans).
    fn gauges(&self) -> crate::api::board::Gauges;
    /// The current admin token.
    fn admin_token(&self) -> Option<String>;
    /// The screen-pop's token, when one is configured.
    fn agent_token(&self) -> Option<String>;
    /// A browser's SDP offer → the gateway's SDP answer (a new call).
    fn webrtc_offer(&self, offer: String) -> BoxFuture<Result<String, OfferRefused>>;
}

#[derive(Clone)]
struct AppState {
    board: CallBoard,
    control: Arc<dyn Control>,
}

/// The router over a board and the gateway's controls.
pub fn router(board: CallBoard, control: Arc<dyn Control>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/calls", get(api_calls))
        .route("/api/calls/{id}", get(api_call))
        .route("/api/reload", post(api_reload))
        .route("/calls/{id}", get(call_page))
        .route("/agent", get(agent_page))
        .route("/agent/events", get(agent_events))
        .route("/call", get(caller_page))
        .route("/call/offer", post(call_offer))
        .with_state(AppState { board, control })
}

/// Serve `router` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

fn bearer_ok(headers: &HeaderMap, control: &dyn Control) -> bool {
    let Some(token) = control.admin_token() else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(control: &dyn Control) -> Response {
    let (status, msg) = if control.admin_token().is_none() {
        (
            StatusCode::FORBIDDEN,
            "no admin token is configured: set [http] admin_token in gateway.toml or VOICEGATE_ADMIN_TOKEN",
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <admin_token>",
        )
    };
    (
        status,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"voicegate\"")],
        Json(json!({"error": msg})),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    if s.control.draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.board.metrics_text(&s.control.gauges()),
    )
        .into_response()
}

async fn api_calls(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !bearer_ok(&headers, s.control.as_ref()) {
        return unauthorized(s.control.as_ref());
    }
    Json(json!({"calls": s.board.list()})).into_response()
}

async fn api_call(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !bearer_ok(&headers, s.control.as_ref()) {
        return unauthorized(s.control.as_ref());
    }
    match s.board.get(&id) {
        Some((_, call)) => Json(call).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no call {id:?} (live or among the recent ones)")})),
        )
            .into_response(),
    }
}

async fn api_reload(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !bearer_ok(&headers, s.control.as_ref()) {
        return unauthorized(s.control.as_ref());
    }
    match s.control.reload() {
        Ok(msg) => Json(json!({"reloaded": true, "message": msg})).into_response(),
        Err(problems) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"reloaded": false, "problems": problems,
                        "message": "configuration refused; the running one stays"})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

async fn call_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
) -> Response {
    let found = s.board.get(&id);
    let allowed = bearer_ok(&headers, s.control.as_ref())
        || matches!((&found, &q.key), (Some((view, _)), Some(k))
            if constant_time_eq(view.key.as_bytes(), k.as_bytes()));
    match found {
        Some((_, call)) if allowed => Html(render_call(&call)).into_response(),
        // Same answer for "no such call" and "wrong key": ids are not probed.
        _ => (
            StatusCode::NOT_FOUND,
            Html("<!doctype html><title>voicegate</title><p>No such call, or the link's key is wrong.</p>".to_string()),
        )
            .into_response(),
    }
}

/// The call's page: who, why, how upset, how long they waited, their words.
pub fn render_call(call: &Value) -> String {
    let s = |k: &str| esc(call[k].as_str().unwrap_or(""));
    let summary = &call["summary"];
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Call {id}</title>\
         <style>body{{font-family:sans-serif;max-width:52em;margin:1em auto}}\
         .bot{{color:#555}} .caller{{font-weight:600}} td{{padding:.2em .6em}}</style></head><body>\
         <h1>Call from {from}</h1><p id=\"summary\">{summary}</p>\
         <table><tr><td>State</td><td id=\"state\">{state}</td></tr>\
         <tr><td>Hand-over reason</td><td id=\"reason\">{reason}</td></tr>\
         <tr><td>Agent</td><td>{agent}</td></tr>\
         <tr><td>Upset</td><td>{upset}</td></tr>\
         <tr><td>Dialled</td><td>{to} (trunk {trunk})</td></tr></table>",
        id = s("id"),
        from = if call["from"].as_str().unwrap_or("").is_empty() {
            "an anonymous caller".to_string()
        } else {
            s("from")
        },
        summary = esc(summary["text"].as_str().unwrap_or("No hand-over yet.")),
        state = s("state"),
        reason = esc(call["handover_reason"].as_str().unwrap_or("—")),
        agent = esc(call["agent"].as_str().unwrap_or("—")),
        upset = summary["frustration"]
            .as_f64()
            .map(|f| format!("{:.0} %", f * 100.0))
            .unwrap_or_else(|| "—".into()),
        to = s("to"),
        trunk = s("trunk"),
    );
    html.push_str("<h2>Transcript</h2><ol id=\"transcript\">");
    for line in call["transcript"].as_array().into_iter().flatten() {
        let speaker = line["speaker"].as_str().unwrap_or("caller");
        html.push_str(&format!(
            "<li class=\"{sp}\">[{at:.1} s] {sp}: {text}</li>",
            sp = esc(speaker),
            at = line["at_s"].as_f64().unwrap_or(0.0),
            text = esc(line["text"].as_str().unwrap_or("")),
        ));
    }
    html.push_str("</ol><h2>Decisions</h2><ul id=\"decisions\">");
    for d in call["decisions"].as_array().into_iter().flatten() {
        html.push_str(&format!(
            "<li>[{at:.1} s] {kind}: {reason}</li>",
            at = d["at_s"].as_f64().unwrap_or(0.0),
            kind = esc(d["decision"].as_str().unwrap_or("")),
            reason = esc(&match &d["reason"] {
                Value::String(r) => r.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            }),
        ));
    }
    html.push_str("</ul></body></html>");
    html
}

#[derive(Deserialize)]
struct ExtQuery {
    ext: Option<String>,
    token: Option<String>,
}

/// The screen-pop is open unless `[http] agent_token` is set; then the page
/// and its stream want `?token=`.
fn agent_allowed(q: &ExtQuery, control: &dyn Control) -> bool {
    match control.agent_token() {
        None => true,
        Some(want) => q
            .token
            .as_deref()
            .is_some_and(|t| constant_time_eq(t.as_bytes(), want.as_bytes())),
    }
}

fn agent_refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "open the screen-pop as /agent?ext=EXT&token=AGENT_TOKEN",
    )
        .into_response()
}

async fn agent_page(State(s): State<AppState>, Query(q): Query<ExtQuery>) -> Response {
    if !agent_allowed(&q, s.control.as_ref()) {
        return agent_refused();
    }
    // Echoed into the page's script: URL-safe characters only.
    let token: String = q
        .token
        .clone()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.~".contains(*c))
        .collect();
    let Some(ext) = q.ext.filter(|e| valid_ext(e)) else {
        return (
            StatusCode::BAD_REQUEST,
            Html("<!doctype html><p>Open this page as /agent?ext=YOUR_EXTENSION (letters, digits, . _ -).</p>".to_string()),
        )
            .into_response();
    };
    Html(
        AGENT_PAGE
            .replace("{{EXT}}", &esc(&ext))
            .replace("{{TOKEN}}", &esc(&token)),
    )
    .into_response()
}

fn valid_ext(ext: &str) -> bool {
    !ext.is_empty()
        && ext.len() <= 64
        && ext
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
}

async fn agent_events(State(s): State<AppState>, Query(q): Query<ExtQuery>) -> Response {
    if !agent_allowed(&q, s.control.as_ref()) {
        return agent_refused();
    }
    let Some(ext) = q.ext.filter(|e| valid_ext(e)) else {
        return (StatusCode::BAD_REQUEST, "ext=EXTENSION is required").into_response();
    };
    // Calls already handed to this extension first, then live updates.
    let current: Vec<Value> = s.board.for_extension(&ext);
    let initial = tokio_stream::iter(current.into_iter().map(|c| Ok(pop_event(&c))));
    let want = ext.clone();
    let updates = BroadcastStream::new(s.board.subscribe()).filter_map(move |m| match m {
        Ok(pop) if pop.ext == want => {
            Some(Ok::<Event, std::convert::Infallible>(pop_event(&pop.call)))
        }
        _ => None,
    });
    Sse::new(initial.chain(updates))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn pop_event(call: &Value) -> Event {
    Event::default().event("call").data(call.to_string())
}

async fn caller_page() -> Html<&'static str> {
    Html(CALLER_PAGE)
}

async fn call_offer(State(s): State<AppState>, body: String) -> Response {
    if s.control.draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down",
        )
            .into_response();
    }
    if body.len() > 64 * 1024 || !body.starts_with("v=0") {
        return (
            StatusCode::BAD_REQUEST,
            "send the browser's SDP offer as the request body",
        )
            .into_response();
    }
    match s.control.webrtc_offer(body).await {
        Ok(answer) => ([(header::CONTENT_TYPE, "application/sdp")], answer).into_response(),
        Err(OfferRefused::Bad(e)) => (StatusCode::BAD_REQUEST, e).into_response(),
        Err(OfferRefused::Busy(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            e,
        )
            .into_response(),
    }
}

const AGENT_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>voicegate · agent {{EXT}}</title>
<style>body{font-family:sans-serif;max-width:52em;margin:1em auto}
.call{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:.6em 0}
.bot{color:#555} .caller{font-weight:600} .ended{opacity:.5}</style></head>
<body><h1>Extension {{EXT}}</h1><p id="status">Waiting for calls…</p><div id="calls"></div>
<script>
const calls = document.getElementById('calls');
const status = document.getElementById('status');
const src = new EventSource('/agent/events?ext=' + encodeURIComponent('{{EXT}}')
  + '&token=' + encodeURIComponent('{{TOKEN}}'));
src.onopen = () => { status.textContent = 'Connected: calls handed to {{EXT}} appear here.'; };
src.addEventListener('call', (e) => {
  const c = JSON.parse(e.data);
  const id = 'call-' + c.id.replace(/[^A-Za-z0-9_-]/g, '_');
  let box = document.getElementById(id);
  if (!box) { box = document.createElement('div'); box.id = id; box.className = 'call'; calls.prepend(box); }
  box.classList.toggle('ended', c.state === 'ended');
  box.replaceChildren();
  const h = document.createElement('h2');
  h.textContent = (c.from || 'Anonymous caller') + ' — ' + (c.handover_reason || '') + ' (' + c.state + ')';
  const p = document.createElement('p'); p.className = 'summary';
  p.textContent = (c.summary && c.summary.text) || '';
  const ol = document.createElement('ol'); ol.className = 'transcript';
  for (const line of c.transcript || []) {
    const li = document.createElement('li'); li.className = line.speaker;
    li.textContent = line.speaker + ': ' + line.text; ol.appendChild(li);
  }
  box.append(h, p, ol);
});
</script></body></html>
"#;

const CALLER_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>voicegate · call us</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto;text-align:center}
button{font-size:1.4em;padding:.5em 1.5em;border-radius:2em}</style></head>
<body><h1>Talk to us</h1>
<button id="call">Call</button> <button id="hangup" disabled>Hang up</button>
<p id="status">Ready.</p><audio id="remote" autoplay></audio>
<script>
let pc = null;
const params = new URLSearchParams(location.search);
const status = (t) => { document.getElementById('status').textContent = t; };
async function call() {
  document.getElementById('call').disabled = true;
  status('Asking for the microphone…');
  // ?raw=1 turns the browser's echo cancellation, noise suppression and gain
  // control off (QA: the gateway then hears exactly the microphone).
  const raw = params.has('raw');
  const mic = await navigator.mediaDevices.getUserMedia({audio: raw
    ? {echoCancellation: false, noiseSuppression: false, autoGainControl: false}
    : true});
  pc = new RTCPeerConnection({iceServers: []});
  for (const t of mic.getTracks()) pc.addTrack(t, mic);
  pc.ontrack = (e) => { document.getElementById('remote').srcObject = e.streams[0] || new MediaStream([e.track]); };
  pc.onconnectionstatechange = () => {
    status('Call: ' + pc.connectionState);
    if (['failed', 'closed', 'disconnected'].includes(pc.connectionState)) hangup();
  };
  await pc.setLocalDescription(await pc.createOffer());
  // Host candidates only: wait for gathering to finish, then send one offer.
  await new Promise((ok) => {
    if (pc.iceGatheringState === 'complete') return ok();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') ok(); };
    setTimeout(ok, 2000);
  });
  status('Calling…');
  const r = await fetch('/call/offer', {method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: pc.localDescription.sdp});
  if (!r.ok) { status('The call failed: ' + await r.text()); hangup(); return; }
  await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
  document.getElementById('hangup').disabled = false;
}
function hangup() {
  if (pc) { pc.close(); pc = null; }
  document.getElementById('call').disabled = false;
  document.getElementById('hangup').disabled = true;
}
document.getElementById('call').onclick = () => call().catch((e) => { status('The call failed: ' + e); hangup(); });
document.getElementById('hangup').onclick = () => { hangup(); status('Call ended.'); };
// ?autostart=1 places the call on load (kiosks, tests).
if (params.has('autostart')) document.getElementById('call').click();
</script></body></html>
"#;
