//! voicegate behind Kamailio's dispatcher, as `make cluster` runs it: the real
//! `scripts/cluster.sh` with real Kamailio (deploy/kamailio/kamailio.cfg), three
//! real voicegate processes on their own loopback addresses, and
//! `voicegate call` as the callers. What is asserted is what each node
//! recorded and decided (its events), and what each caller got back.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// Three gateways and Whisper at once: one cluster at a time on a 2-core box.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

struct Options {
    /// `CLUSTER_MAX_CALLS`: each node's `[sip] max_calls`.
    max_calls: &'static str,
    /// Seconds before a crashed node is restarted.
    restart_s: u32,
    /// The dispatcher's OPTIONS probe interval.
    ping_s: u32,
    /// The agents' PBX (Kamailio registrar) port, when the test has one.
    pbx_port: Option<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_calls: "",
            restart_s: 1,
            ping_s: 1,
            pbx_port: None,
        }
    }
}

struct Cluster {
    script: Child,
    dir: tempfile::TempDir,
    /// The dispatcher, where callers send INVITEs.
    edge: String,
    /// The nodes' addresses, node1 first.
    nodes: Vec<String>,
    /// The configuration every node was made from.
    config: PathBuf,
}

impl Cluster {
    /// Start `scripts/cluster.sh` on 127.0.`net`.1 (edge) and .2–.4 (nodes).
    fn start(net: u8, opts: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("shared-config");
        copy_dir(&root().join("sip-config"), &config);
        let gateway = std::fs::read_to_string(config.join("gateway.toml"))
            .expect("gateway.toml")
            // Three gateways share two cores here: slow recognition is not
            // what these tests are about (the overload path has its own).
            .replace("max_latency_ms = 3000", "max_latency_ms = 30000");
        std::fs::write(config.join("gateway.toml"), gateway).expect("write");
        if let Some(port) = opts.pbx_port {
            let agents = std::fs::read_to_string(config.join("agents.toml"))
                .expect("agents.toml")
                .replace(
                    "sip:1001@127.0.0.1:5070",
                    &format!("sip:1001@127.0.0.1:{port}"),
                );
            std::fs::write(config.join("agents.toml"), agents).expect("write");
        }
        let edge = format!("127.0.{net}.1:5080");
        let nodes: Vec<String> = (2..=4).map(|i| format!("127.0.{net}.{i}")).collect();
        let out = std::fs::File::create(dir.path().join("script.out")).expect("out");
        let err = std::fs::File::create(dir.path().join("script.err")).expect("err");
        let script = Command::new("bash")
            .arg(root().join("scripts/cluster.sh"))
            .env("VOICEGATE", env!("CARGO_BIN_EXE_voicegate"))
            .env("CLUSTER_DIR", dir.path().join("cluster"))
            .env("CLUSTER_CONFIG", &config)
            .env("CLUSTER_LISTEN", &edge)
            .env("CLUSTER_NODES", nodes.join(" "))
            .env("CLUSTER_HTTP_BASE", "18080")
            .env("CLUSTER_RTP_BASE", "40000")
            .env("CLUSTER_PING", opts.ping_s.to_string())
            .env("CLUSTER_MAX_CALLS", opts.max_calls)
            .env("CLUSTER_RESTART_S", opts.restart_s.to_string())
            .env("CLUSTER_PBX", "0")
            .env("RUST_LOG", "info,rsipstack=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: the script, Kamailio and the nodes are
            // stopped together whatever happens to the test.
            .process_group(0)
            .spawn()
            .expect("bash scripts/cluster.sh");
        let mut c = Cluster {
            script,
            dir,
            edge,
            nodes,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while !c.printed().contains("voicegate cluster up") {
            if let Ok(Some(status)) = c.script.try_wait() {
                panic!("cluster.sh exited ({status}):\n{}", c.logs());
            }
            assert!(Instant::now() < deadline, "no cluster:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every node answered a probe at least once.
        std::thread::sleep(Duration::from_secs(u64::from(opts.ping_s) + 1));
        c
    }

    fn printed(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("script.out")).unwrap_or_default()
    }

    fn node_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("cluster/node{n}"))
    }

    fn node_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.node_dir(n).join("voicegate.log")).unwrap_or_default()
    }

    fn kamailio_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cluster/kamailio.log")).unwrap_or_default()
    }

    /// The tail of every log, for failure messages.
    fn logs(&self) -> String {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        let mut out = format!(
            "--- script\n{}\n{}\n--- kamailio\n{}",
            self.printed(),
            tail(std::fs::read_to_string(self.dir.path().join("script.err")).unwrap_or_default()),
            tail(self.kamailio_log())
        );
        for n in 1..=self.nodes.len() {
            out += &format!("\n--- node{n}\n{}", tail(self.node_log(n)));
        }
        out
    }

    fn pid(&self, n: usize) -> i32 {
        std::fs::read_to_string(self.node_dir(n).join("pid"))
            .expect("node pid")
            .trim()
            .parse()
            .expect("pid")
    }

    fn signal(&self, n: usize, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid(n).to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} node{n}");
    }

    /// Every recorded call: its Call-ID → (node, call directory).
    fn recorded(&self) -> BTreeMap<String, Vec<(usize, PathBuf)>> {
        let mut out: BTreeMap<String, Vec<(usize, PathBuf)>> = BTreeMap::new();
        for n in 1..=self.nodes.len() {
            let rec = self.node_dir(n).join("recordings");
            for day in std::fs::read_dir(&rec).into_iter().flatten().flatten() {
                for call in std::fs::read_dir(day.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let dir = call.path();
                    let id = events(&dir)
                        .iter()
                        .find(|e| e["kind"] == "call.invite")
                        .and_then(|e| e["call_id"].as_str().map(str::to_string));
                    if let Some(id) = id {
                        out.entry(id).or_default().push((n, dir));
                    }
                }
            }
        }
        out
    }

    /// Wait until none of the nodes' calls is still being recorded.
    fn wait_recordings_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let open: Vec<PathBuf> = self
                .recorded()
                .into_values()
                .flatten()
                .map(|(_, d)| d)
                .filter(|d| d.join(".recording").exists())
                .collect();
            if open.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "calls still recording: {open:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM: the script drains the nodes, then stops Kamailio.
        let pid = self.script.id() as i32;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.script.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.script.wait();
    }
}

/// `voicegate call` placing `n` calls of `wav` to the dispatcher, `rate` a
/// second, in the background.
fn dial(c: &Cluster, wav: &Path, n: usize, rate: f64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .current_dir(root())
        .arg("call")
        .arg(format!("sip:bot@{}", c.edge))
        .arg("--play")
        .arg(wav)
        .args(["--calls", &n.to_string(), "--rate", &rate.to_string()])
        .args(["--linger", "0.5", "--json", "--no-listen"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("voicegate call")
}

/// What each caller got (one JSON object per call).
fn outcomes(child: Child) -> Vec<Value> {
    let out = child.wait_with_output().expect("voicegate call");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn failed(calls: &[Value]) -> Vec<&Value> {
    calls
        .iter()
        .filter(|c| c["answered"] != true || !c["error"].is_null())
        .collect()
}

fn call_id(c: &Value) -> String {
    c["call_id"].as_str().unwrap_or_default().to_string()
}

/// What a call decided, as `voicegate replay` reports it: (outcome, reason,
/// intents).
fn decided(events: &[Value]) -> (String, Value, Vec<String>) {
    let handover = events
        .iter()
        .find(|e| e["kind"] == "decision" && e["decision"] == "handover");
    let intents: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "decision" && e["decision"] == "intent")
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    let outcome = if handover.is_some() {
        "transferred"
    } else if !intents.is_empty() {
        "bot_resolved"
    } else {
        "caller_hung_up"
    };
    let reason = handover.map(|h| h["reason"].clone()).unwrap_or_default();
    (outcome.to_string(), reason, intents)
}

/// Which node a call landed on, by its Call-ID.
fn node_of(recorded: &BTreeMap<String, Vec<(usize, PathBuf)>>, call: &Value) -> Option<usize> {
    recorded
        .get(&call_id(call))
        .and_then(|v| v.first())
        .map(|(n, _)| *n)
}

#[test]
fn sixty_calls_spread_over_three_nodes_each_recorded_once_deciding_as_offline() {
    let _one = serial();
    let c = Cluster::start(11, Options::default());
    let wav = root().join("tests/calls/calm_billing.wav");
    let placed = outcomes(dial(&c, &wav, 60, 1.5));
    assert_eq!(placed.len(), 60, "{}", c.logs());
    let bad = failed(&placed);
    assert!(bad.is_empty(), "failed calls: {bad:#?}\n{}", c.logs());
    c.wait_recordings_closed(Duration::from_secs(60));
    let recorded = c.recorded();
    let offline = replay_json(&wav, &c.config, &[]);
    let want = (
        offline["outcome"].as_str().unwrap_or_default().to_string(),
        offline["reason"].clone(),
        offline["intents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    assert_eq!(want.0, "bot_resolved", "offline: {offline}");
    let mut per_node = [0usize; 3];
    let mut mismatches = Vec::new();
    for call in &placed {
        let copies = recorded.get(&call_id(call)).cloned().unwrap_or_default();
        assert_eq!(
            copies.len(),
            1,
            "call {} recorded on exactly one node: {copies:?}",
            call_id(call)
        );
        let (node, dir) = &copies[0];
        per_node[node - 1] += 1;
        // The node where it landed decided what the recording decides offline.
        let mut live = decided(&events(dir));
        live.2.dedup();
        let mut expected = want.clone();
        expected.2.dedup();
        if live != expected {
            mismatches.push(format!("node{node} {}: {live:?}", call_id(call)));
        }
        let source = events(dir)
            .iter()
            .find(|e| e["kind"] == "call.invite")
            .map(|e| e["source"].clone())
            .unwrap_or_default();
        // The caller's address, as the trusted dispatcher wrote it.
        assert_eq!(source, "127.0.0.1", "{dir:?}");
    }
    println!("calls per node: {per_node:?}; offline decision {want:?}");
    assert!(
        mismatches.is_empty(),
        "live vs offline {want:?}: {mismatches:#?}"
    );
    // Each node's share is within ±50 % of an even split (20).
    for (i, n) in per_node.iter().enumerate() {
        assert!(
            (10..=30).contains(n),
            "node{} took {n} of 60 calls: {per_node:?}",
            i + 1
        );
    }
    assert_eq!(recorded.len(), 60, "no recording but the callers' calls");
}

#[test]
fn a_draining_node_finishes_its_calls_while_new_ones_go_to_the_others() {
    let _one = serial();
    let c = Cluster::start(12, Options::default());
    let wav = root().join("tests/calls/calm_tracking.wav");
    // Six calls up at once: two on each node.
    let first = dial(&c, &wav, 6, 3.0);
    // All six up (their events reach the disk on the recorder's flush).
    let deadline = Instant::now() + Duration::from_secs(12);
    let on_node: Vec<usize> = loop {
        std::thread::sleep(Duration::from_millis(500));
        let up: Vec<usize> = c.recorded().values().map(|v| v[0].0).collect();
        if up.len() == 6 {
            break up;
        }
        assert!(
            Instant::now() < deadline,
            "six calls up: {up:?}\n{}",
            c.logs()
        );
    };
    let drained = 1
        + (0..3)
            .max_by_key(|i| on_node.iter().filter(|n| **n == i + 1).count())
            .unwrap_or(0);
    let busy = on_node.iter().filter(|n| **n == drained).count();
    assert!(busy >= 1);
    c.signal(drained, "TERM");
    let signalled = Instant::now();
    // New calls during the drain: before the next probe the node answers
    // them 503 and the dispatcher fails over; after it, it is not tried.
    let second = dial(&c, &wav, 6, 2.0);
    let first = outcomes(first);
    let second = outcomes(second);
    assert!(
        failed(&first).is_empty() && failed(&second).is_empty(),
        "zero failed calls: {first:#?}\n{second:#?}\n{}",
        c.logs()
    );
    // The drained node's calls ran to their end (the caller hung up when
    // its file ended, not the node at shutdown).
    c.wait_recordings_closed(Duration::from_secs(60));
    let recorded = c.recorded();
    for call in &first {
        assert_eq!(call["ended_by"], "caller", "{call}");
        let wanted = 14.0;
        assert!(
            call["duration_s"].as_f64().unwrap_or(0.0) >= wanted,
            "a call cut short by the drain: {call}"
        );
    }
    for call in &second {
        assert_ne!(
            node_of(&recorded, call),
            Some(drained),
            "a new call reached the draining node{drained}: {call}\n{}",
            c.logs()
        );
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(40),
        "the drain outlived its calls"
    );
    // It drained and exited cleanly; the others still serve.
    let log = c.node_log(drained);
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        c.printed().contains(&format!("node{drained} drained"))
            || std::fs::read_to_string(c.dir.path().join("script.err"))
                .unwrap_or_default()
                .contains(&format!("node{drained} drained")),
        "{}",
        c.logs()
    );
}

#[test]
fn a_crashed_node_is_routed_around_and_its_recordings_repaired_on_restart() {
    let _one = serial();
    let c = Cluster::start(
        13,
        Options {
            restart_s: 8,
            ..Options::default()
        },
    );
    let wav = root().join("tests/calls/calm_billing.wav");
    // Calls keep coming, one a second, for 15 s.
    let started = Instant::now();
    let caller = dial(&c, &wav, 15, 1.0);
    std::thread::sleep(Duration::from_secs(4));
    // Kill a node that holds a call (its events reach the disk on the
    // recorder's flush: wait for one).
    let deadline = Instant::now() + Duration::from_secs(10);
    let victim = loop {
        if let Some(n) = c.recorded().values().map(|v| v[0].0).next() {
            break n;
        }
        assert!(Instant::now() < deadline, "no call up:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    let kill_offset = started.elapsed();
    let killed_at = Instant::now();
    c.signal(victim, "KILL");
    let placed = outcomes(caller);
    assert_eq!(placed.len(), 15);
    // The node came back (restarted by the supervisor) and repaired what the
    // crash left unfinished.
    let deadline = Instant::now() + Duration::from_secs(40);
    while c.node_log(victim).matches("voicegate ready").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "node{victim} not restarted:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.wait_recordings_closed(Duration::from_secs(60));
    assert!(
        c.node_log(victim)
            .contains("repaired recordings left unfinished by a crash"),
        "{}",
        c.logs()
    );
    let recorded = c.recorded();
    let mut lost = Vec::new();
    for call in &placed {
        let node = node_of(&recorded, call);
        if !failed(std::slice::from_ref(call)).is_empty() {
            // Only calls that were on the dead node may fail.
            assert_eq!(
                node,
                Some(victim),
                "a call failed off the dead node: {call}\n{}",
                c.logs()
            );
            lost.push(call_id(call));
        }
    }
    // Calls on the dead node have a playable recording up to the crash.
    for (n, dir) in recorded.values().flatten() {
        if *n == victim {
            let r = hound::WavReader::open(dir.join("call.wav")).expect("repaired WAV opens");
            assert!(r.duration() > 0, "{dir:?}");
        }
    }
    // The dispatcher marked it down and new calls went elsewhere while it
    // was: every call placed from one probe interval after the kill until
    // its restart landed on another node.
    let down = c.kamailio_log();
    assert!(
        down.contains(&format!("voicegate node down: sip:{}", c.nodes[victim - 1])),
        "{down}"
    );
    // Calls placed from one probe interval (+1 s margin) after the kill
    // until a second before the supervisor restarts it (8 s).
    let window = (kill_offset + Duration::from_secs(2))..(kill_offset + Duration::from_secs(7));
    let mut during = 0;
    for (i, call) in placed.iter().enumerate() {
        // Calls were placed at 1/s from `started`.
        if window.contains(&Duration::from_secs(i as u64)) {
            during += 1;
            assert_ne!(node_of(&recorded, call), Some(victim), "{call}");
            assert!(failed(std::slice::from_ref(call)).is_empty(), "{call}");
        }
    }
    assert!(during >= 3, "calls placed while node{victim} was down");
    println!(
        "node{victim} killed with kill -9 ({:.1} s ago); calls placed while it was down: \
         {during}, all elsewhere; failed calls (all on it): {}",
        killed_at.elapsed().as_secs_f64(),
        lost.len()
    );
}

#[test]
fn a_node_at_max_calls_is_routed_around_instead_of_failing_calls() {
    let _one = serial();
    let c = Cluster::start(
        14,
        Options {
            max_calls: "2 0 0",
            ..Options::default()
        },
    );
    let wav = root().join("tests/calls/calm_billing.wav");
    // Twelve calls up within four seconds, each ~13 s long.
    let placed = outcomes(dial(&c, &wav, 12, 3.0));
    assert!(
        failed(&placed).is_empty(),
        "excess calls must flow to other nodes, not fail: {placed:#?}\n{}",
        c.logs()
    );
    c.wait_recordings_closed(Duration::from_secs(60));
    let recorded = c.recorded();
    let mut per_node = [0usize; 3];
    for call in &placed {
        per_node[node_of(&recorded, call).expect("recorded") - 1] += 1;
    }
    println!("calls per node with node1 at max_calls = 2: {per_node:?}");
    assert!(per_node[0] <= 2, "{per_node:?}");
    assert_eq!(per_node.iter().sum::<usize>(), 12);
}

#[test]
fn a_hand_over_from_every_node_reaches_agent_1001_with_its_summary() {
    let _one = serial();
    let pbx = Kamailio::start();
    let _agent = Agent::start(&pbx, "1001");
    let c = Cluster::start(
        15,
        Options {
            pbx_port: Some(pbx.port),
            ..Options::default()
        },
    );
    let wav = root().join("tests/calls/ask_human.wav");
    // Three calls at once: the least-loaded rule puts one on each node.
    let placed = outcomes(dial(&c, &wav, 3, 4.0));
    assert!(failed(&placed).is_empty(), "{placed:#?}\n{}", c.logs());
    c.wait_recordings_closed(Duration::from_secs(60));
    let recorded = c.recorded();
    let nodes: BTreeSet<usize> = placed
        .iter()
        .filter_map(|p| node_of(&recorded, p))
        .collect();
    assert_eq!(nodes.len(), 3, "one call per node: {nodes:?}\n{}", c.logs());
    // Each node decided the hand-over and rang 1001 through the PBX with
    // the summary on the INVITE.
    let log = pbx.log();
    let mut from_nodes = BTreeSet::new();
    for line in log.lines().filter_map(|l| l.split("VG-INVITE ").nth(1)) {
        let field = |k: &str| {
            line.split('|')
                .find_map(|f| f.strip_prefix(k))
                .unwrap_or_default()
                .to_string()
        };
        if field("ruri=") == "1001" {
            assert!(
                !field("summary=").is_empty() && field("summary=") != "<null>",
                "{line}"
            );
            assert!(field("reason=").contains("requested"), "{line}");
            assert!(
                !field("uui=").is_empty() && field("uui=") != "<null>",
                "{line}"
            );
            from_nodes.insert(field("src="));
        }
    }
    let want: BTreeSet<String> = c.nodes.iter().cloned().collect();
    assert_eq!(
        from_nodes,
        want,
        "hand-overs from every node:\n{log}\n{}",
        c.logs()
    );
    for dir in recorded.values().flatten().map(|(_, d)| d) {
        let (outcome, reason, _) = decided(&events(dir));
        assert_eq!(outcome, "transferred", "{dir:?}");
        assert_eq!(reason, "requested", "{dir:?}");
    }
}
