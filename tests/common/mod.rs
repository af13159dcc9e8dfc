//! Shared helpers for the end-to-end tests: a real voicegate process, real
//! SIP peers (SIPp, baresip), and readers for what the gateway recorded.
#![allow(dead_code)]

use serde_json::Value;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free UDP (and usually TCP) port on loopback.
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = s.local_addr() else { continue };
        if std::net::TcpListener::bind(("127.0.0.1", addr.port())).is_ok() {
            return addr.port();
        }
    }
    panic!("no free port");
}

/// A random even port base for an RTP range of `span` ports, whose first
/// few ports are free right now (tests run side by side).
pub fn rtp_base(span: u16) -> u16 {
    for _ in 0..64 {
        let r: u16 = (std::process::id() as u16).wrapping_mul(7919)
            ^ (Instant::now().elapsed().subsec_nanos() as u16)
            ^ (free_port().wrapping_mul(31));
        let base = 30000 + (r % ((30000 - span) / 2)) * 2;
        let free = (base..base + span.min(8)).all(|p| {
            UdpSocket::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("0.0.0.0", p)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free RTP port range");
}

/// Project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running gateway with its own configuration directory and recordings.
pub struct Gateway {
    child: Option<Child>,
    /// SIP port (UDP and TCP) on 127.0.0.1.
    pub sip_port: u16,
    /// HTTP port on 127.0.0.1.
    pub http_port: u16,
    /// Temporary directory holding `config/`, `recordings/` and `gateway.log`.
    pub dir: tempfile::TempDir,
    /// Run under `prlimit --nofile=N:N`.
    nofile: Option<u32>,
}

impl Gateway {
    /// Start with the shipped `sip-config/`, after `edit(gateway_toml, trunks_toml)`.
    pub fn start(edit: impl FnOnce(&mut String, &mut String)) -> Gateway {
        Self::start_with(edit, |_| {})
    }

    /// Like [`Gateway::start`], with `files(config_dir)` run before the
    /// process starts (to edit `agents.toml`, `flow.toml`, …).
    pub fn start_with(
        edit: impl FnOnce(&mut String, &mut String),
        files: impl FnOnce(&Path),
    ) -> Gateway {
        Self::start_full(edit, files, None)
    }

    /// Like [`Gateway::start`], the process limited to `nofile` file
    /// descriptors (soft and hard).
    pub fn start_limited(nofile: u32, edit: impl FnOnce(&mut String, &mut String)) -> Gateway {
        Self::start_full(edit, |_| {}, Some(nofile))
    }

    fn start_full(
        edit: impl FnOnce(&mut String, &mut String),
        files: impl FnOnce(&Path),
        nofile: Option<u32>,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let sip_port = free_port();
        let http_port = loop {
            let p = free_port();
            if p != sip_port {
                break p;
            }
        };
        let cfg = dir.path().join("config");
        copy_dir(&root().join("sip-config"), &cfg);
        // The RTP range may not contain the SIP port (config check refuses it).
        let base = loop {
            let b = rtp_base(200);
            if !(b..b + 200).contains(&sip_port) {
                break b;
            }
        };
        let mut gateway = std::fs::read_to_string(root().join("sip-config/gateway.toml"))
            .expect("gateway.toml")
            .replace("127.0.0.1:5060", &format!("127.0.0.1:{sip_port}"))
            .replace("rtp_port_min = 20000", &format!("rtp_port_min = {base}"))
            .replace(
                "rtp_port_max = 29999",
                &format!("rtp_port_max = {}", base + 199),
            )
            .replace(
                "dir = \"recordings\"",
                &format!("dir = {:?}", dir.path().join("recordings")),
            )
            // Test machines run many gateways and Whisper at once: allow slow
            // recognition here (the overload path has its own test).
            .replace("max_latency_ms = 3000", "max_latency_ms = 30000")
            // One whisper.cpp thread per worker: several gateways (and
            // replays) share this box's cores, and ggml's threads wait for
            // each other by spinning — oversubscribed, they make a 2-core box
            // several times slower (measured: the replay tests 256 s → 41 s).
            .replace("threads_per_worker = 2", "threads_per_worker = 1")
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{http_port}"))
            // Tests stop gateways often: a short grace keeps them quick.
            .replace("grace_s = 30", "grace_s = 2");
        let mut trunks =
            std::fs::read_to_string(root().join("sip-config/trunks.toml")).expect("trunks.toml");
        edit(&mut gateway, &mut trunks);
        std::fs::write(cfg.join("gateway.toml"), gateway).expect("write");
        std::fs::write(cfg.join("trunks.toml"), trunks).expect("write");
        files(&cfg);
        let mut g = Gateway {
            child: None,
            sip_port,
            http_port,
            dir,
            nofile,
        };
        g.spawn();
        g
    }

    /// (Re)start the process on the same configuration.
    pub fn spawn(&mut self) {
        let readies = self.log().matches("voicegate ready").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        // Under `prlimit --nofile=N:N` when a test asks for a small fd limit.
        let mut command = match self.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_voicegate"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_voicegate")),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(self.dir.path().join("config"))
            // VG_TEST_RUST_LOG=info,rsipstack=debug shows the SIP wire when a
            // test is debugged.
            .env(
                "RUST_LOG",
                std::env::var("VG_TEST_RUST_LOG").unwrap_or("info,rsipstack=warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn voicegate");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().matches("voicegate ready").count() > readies {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("voicegate exited early ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("voicegate did not become ready:\n{}", self.log());
    }

    /// The gateway's log so far.
    /// The gateway's process id, while it runs.
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The gateway's resident memory (KiB), from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// The recordings root.
    pub fn recordings(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    /// Every call directory recorded so far.
    pub fn call_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for day in std::fs::read_dir(self.recordings())
            .into_iter()
            .flatten()
            .flatten()
        {
            for call in std::fs::read_dir(day.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(call.path());
            }
        }
        out.sort();
        out
    }

    /// Wait until some call has logged an event of `kind` whose fields
    /// mention `needle` (events reach the disk once a flush period): a test
    /// acts on what the gateway did, not on a guess at how long it takes.
    pub fn wait_event(&self, kind: &str, needle: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.call_dirs().iter().find_map(|d| {
                events(d)
                    .into_iter()
                    .find(|e| e["kind"] == kind && e.to_string().contains(needle))
            });
            if let Some(event) = found {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event with {needle:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until `n` calls have ended (their events say `call.ended` and the
    /// recording is finalised).
    pub fn wait_calls_ended(&self, n: usize, timeout: Duration) -> Vec<PathBuf> {
        let deadline = Instant::now() + timeout;
        loop {
            let done: Vec<PathBuf> = self
                .call_dirs()
                .into_iter()
                .filter(|d| {
                    !d.join(".recording").exists()
                        && events(d).iter().any(|e| e["kind"] == "call.ended")
                })
                .collect();
            if done.len() >= n {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} calls ended; log:\n{}",
                done.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The admin token of the shipped configuration.
    pub const TOKEN: &'static str = "change-me-now";

    /// `GET path` on the gateway's HTTP port: (status, body). `token` is sent
    /// as a bearer token.
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        http(
            "GET",
            &format!("http://127.0.0.1:{}{path}", self.http_port),
            token,
            None,
        )
    }

    /// `POST path` with `body`: (status, body).
    pub fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        http(
            "POST",
            &format!("http://127.0.0.1:{}{path}", self.http_port),
            token,
            Some(body),
        )
    }

    /// Send a signal (`HUP`, `TERM`) to the gateway process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = self.child.as_ref() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Wait for the process to exit on its own; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(s))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kamailio as the PBX/registrar on its own loopback port (the verified
/// set-up of `../shared/harness`), logging each INVITE's hand-over headers,
/// each CANCEL and each REGISTER to `kamailio.log`.
pub struct Kamailio {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Kamailio {
    pub fn start() -> Kamailio {
        Self::start_with_password(None)
    }

    /// With `Some(password)`, every new INVITE must carry digest
    /// credentials for it (407 challenge first), as a PBX asks of a trunk.
    pub fn start_with_password(password: Option<&str>) -> Kamailio {
        let auth = match password {
            Some(p) => format!(
                r#"if (is_method("INVITE")) {{
    if (!pv_proxy_authenticate("$fd", "{p}", "0")) {{ xlog("L_ERR", "VG-CHALLENGE $fU\n"); proxy_challenge("$fd", "0"); exit; }}
    xlog("L_ERR", "VG-AUTHORIZED $au\n");
  }}"#
            ),
            None => String::new(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let cfg = format!(
            r#"#!KAMAILIO
listen=udp:127.0.0.1:{port}
children=2
log_stderror=yes
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "auth.so"
modparam("usrloc", "db_mode", 0)
request_route {{
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483","Too Many Hops"); exit; }}
  if (is_method("REGISTER")) {{ xlog("L_ERR", "VG-REGISTER $tU
"); save("location"); exit; }}
  if (has_totag()) {{
    if (is_method("BYE")) {{ xlog("L_ERR", "VG-BYE from=$fU to=$tU\n"); }}
    if (loose_route()) {{ t_relay(); exit; }}
    if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    sl_send_reply("404","Not here"); exit;
  }}
  if (is_method("CANCEL")) {{ xlog("L_ERR", "VG-CANCEL $rU
"); if (t_check_trans()) {{ t_relay(); }} exit; }}
  {auth}
  if (is_method("INVITE")) {{
    xlog("L_ERR", "VG-INVITE ruri=$rU|src=$si|at=$TV(Sn)|uui=$hdr(User-to-User)|reason=$hdr(X-Voicegate-Reason)|summary=$hdr(X-Voicegate-Summary)|callinfo=$hdr(Call-Info)|
");
  }}
  record_route();
  if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
  t_relay();
}}
"#
        );
        let path = dir.path().join("kamailio.cfg");
        std::fs::write(&path, cfg).expect("cfg");
        let log = std::fs::File::create(dir.path().join("kamailio.log")).expect("log");
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&path)
            .args(["-DD", "-E", "-n", "1", "-Y"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: Kamailio forks workers, stopped with it.
            .process_group(0)
            .spawn()
            .expect("kamailio (make test installs it)");
        let k = Kamailio { child, port, dir };
        std::thread::sleep(Duration::from_millis(800));
        k
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }

    /// Wait until `ext` has registered.
    pub fn wait_registered(&self, ext: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.log().contains(&format!("VG-REGISTER {ext}")) {
            assert!(
                Instant::now() < deadline,
                "{ext} never registered:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    /// When each hand-over INVITE reached Kamailio (Unix seconds, µs resolution).
    pub fn invite_times(&self) -> Vec<f64> {
        self.log()
            .lines()
            .filter_map(|l| l.split("VG-INVITE ").nth(1))
            .filter_map(|l| l.split('|').find_map(|f| f.strip_prefix("at=")))
            .filter_map(|t| t.trim().parse().ok())
            .collect()
    }

    /// The `Call-Info` header of each hand-over INVITE.
    pub fn call_infos(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split("VG-INVITE ").nth(1))
            .filter_map(|l| l.split('|').find_map(|f| f.strip_prefix("callinfo=")))
            .map(str::to_string)
            .collect()
    }

    /// The hand-over INVITEs Kamailio relayed or refused: (ruri, uui, reason, summary).
    pub fn invites(&self) -> Vec<(String, String, String, String)> {
        self.log()
            .lines()
            .filter_map(|l| l.split("VG-INVITE ").nth(1))
            .map(|l| {
                let field = |k: &str| {
                    l.split('|')
                        .find_map(|f| f.strip_prefix(k))
                        .unwrap_or("")
                        .to_string()
                };
                (
                    field("ruri="),
                    field("uui="),
                    field("reason="),
                    field("summary="),
                )
            })
            .collect()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--"])
            .arg(format!("-{}", self.child.id()))
            .status();
        stop_child(&mut self.child);
    }
}

/// One HTTP request: (status, body); 0 when nothing answered.
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    match res {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// A command on a baresip UDP console (`cons_listen`).
pub fn baresip_command(console: u16, command: &str) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.send_to(format!("{command}\n").as_bytes(), ("127.0.0.1", console))
        .expect("console");
}

/// Kill a peer process and reap it.
pub fn stop_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// baresip with its configuration in `dir` and `args` after it; its stderr
/// goes to `dir/stderr.log` (what [`died_at_start`] prints).
fn spawn_baresip(dir: &Path, args: &[String]) -> Child {
    Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("stderr.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("baresip (make test installs it)")
}

/// A baresip just started, 300 ms on: true when it has already exited (a
/// port it was given was taken meanwhile) and attempt `attempt` of 3 leaves
/// another; its stderr is printed.
fn died_at_start(child: &mut Child, stderr: &Path, attempt: u32) -> bool {
    std::thread::sleep(Duration::from_millis(300));
    match child.try_wait() {
        Ok(Some(status)) if attempt < 3 => {
            let why = std::fs::read_to_string(stderr).unwrap_or_default();
            eprintln!("baresip exited at start ({status}), retrying: {why}");
            true
        }
        _ => false,
    }
}

/// baresip as an agent phone: registered at Kamailio as `ext`, answering
/// by itself, recording what it hears (`*-dec.wav`) and what it sends.
pub struct Agent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub console: u16,
}

impl Agent {
    pub fn start(pbx: &Kamailio, ext: &str) -> Agent {
        Self::start_with(pbx, ext, "")
    }

    /// An agent phone with extra account parameters (`;audio_codecs=PCMA`).
    pub fn start_with(pbx: &Kamailio, ext: &str, account_params: &str) -> Agent {
        Self::start_speaking(pbx, ext, account_params, &[])
    }

    /// An agent who says `lines` (espeak-ng), each at its second after answering.
    pub fn start_speaking(
        pbx: &Kamailio,
        ext: &str,
        account_params: &str,
        lines: &[(f64, &str)],
    ) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        // baresip hangs up when its audio file ends: a long one, quiet but
        // for the agent's lines.
        let mut audio = vec![0i16; 8000 * 240];
        for (at, text) in lines {
            let raw = dir.path().join("line-raw.wav");
            let line = dir.path().join("line.wav");
            let ok = Command::new("espeak-ng")
                .arg("-w")
                .arg(&raw)
                .arg(text)
                .status()
                .is_ok_and(|s| s.success())
                && Command::new("sox")
                    .arg(&raw)
                    .args(["-r", "8000", "-c", "1", "-b", "16"])
                    .arg(&line)
                    .status()
                    .is_ok_and(|s| s.success());
            assert!(ok, "espeak-ng and sox (make test installs them)");
            let spoken = wav_mono(&line);
            let from = (*at * 8000.0) as usize;
            for (i, s) in spoken.iter().enumerate() {
                if let Some(slot) = audio.get_mut(from + i) {
                    *slot = *s;
                }
            }
        }
        let silence = dir.path().join("silence.wav");
        write_wav_8k(&silence, &audio);
        let rec = dir.path().join("rec");
        std::fs::create_dir_all(&rec).expect("rec");
        // The ports are picked free, then bound by baresip a moment later:
        // another peer of the parallel suite (a flood test's sockets) may
        // take one in between, and baresip exits at once without
        // registering. Start it again on fresh ports when that happens.
        for attempt in 1..=3 {
            let rtp = rtp_base(100);
            let console = free_port();
            let config = format!(
                "poll_method epoll\nsip_listen 127.0.0.1:{}\naudio_player aubridge,nil\n\
                 audio_source aufile,{}\naudio_alert aufile,{}\nmodule_path /usr/lib/baresip/modules\n\
                 module cons.so\nmodule g711.so\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\n\
                 module account.so\nmodule_app menu.so\nsnd_path {}\nrtp_ports {}-{}\ncons_listen 127.0.0.1:{console}\n",
                free_port(),
                silence.display(),
                silence.display(),
                rec.display(),
                rtp,
                rtp + 99
            );
            std::fs::write(dir.path().join("config"), config).expect("config");
            std::fs::write(
                dir.path().join("accounts"),
                format!(
                    "<sip:{ext}@127.0.0.1:{}>;regint=60{}{account_params}\n",
                    pbx.port,
                    // Auto-answer unless the test picks the answer mode itself.
                    if account_params.contains("answermode=") {
                        ""
                    } else {
                        ";answermode=auto"
                    }
                ),
            )
            .expect("accounts");
            let mut child = spawn_baresip(dir.path(), &[]);
            if !died_at_start(&mut child, &dir.path().join("stderr.log"), attempt) {
                pbx.wait_registered(ext);
                return Agent {
                    child,
                    dir,
                    console,
                };
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Answer the ringing call (an agent started with `;answermode=manual`).
    pub fn accept(&self) {
        baresip_command(self.console, "/accept");
    }

    /// Hang up the agent's phone.
    pub fn hang_up(&self) {
        baresip_command(self.console, "/hangup");
    }

    /// Press a key on the agent's phone (RFC 4733).
    pub fn send_digit(&self, digit: char) {
        baresip_command(self.console, &format!("/sndcode {digit}"));
    }

    /// What the agent heard: the decoded-audio recordings, longest first.
    pub fn heard(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("rec"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        files
            .sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
        files
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// A baresip caller playing `wav`, with a UDP console for sending DTMF.
pub struct Caller {
    child: Child,
    console: u16,
    _dir: tempfile::TempDir,
}

impl Caller {
    pub fn dial(gw: &Gateway, wav: &Path, seconds: u32) -> Caller {
        Self::dial_as(gw, wav, seconds, "2001")
    }

    /// Call from `user` (the caller ID the gateway sees).
    pub fn dial_as(gw: &Gateway, wav: &Path, seconds: u32, user: &str) -> Caller {
        // The ports are picked free, then bound by baresip a moment later:
        // another peer of the parallel suite may take one in between, and
        // baresip then exits at once without dialling. Start it again on
        // fresh ports when that happens (its stderr says why, kept here).
        for attempt in 1..=3 {
            let mut caller = Self::start_baresip(gw, wav, seconds, user);
            let stderr = caller._dir.path().join("stderr.log");
            if !died_at_start(&mut caller.child, &stderr, attempt) {
                return caller;
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    fn start_baresip(gw: &Gateway, wav: &Path, seconds: u32, user: &str) -> Caller {
        let dir = tempfile::tempdir().expect("tempdir");
        let silence = dir.path().join("silence.wav");
        write_wav_8k(&silence, &[0i16; 8000]);
        let console = free_port();
        let rtp = rtp_base(100);
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{}\naudio_player aubridge,nil\n\
             audio_source aufile,{}\naudio_alert aufile,{}\nmodule_path /usr/lib/baresip/modules\n\
             module cons.so\nmodule g711.so\nmodule aufile.so\nmodule aubridge.so\n\
             module account.so\nmodule_app menu.so\nrtp_ports {}-{}\ncons_listen 127.0.0.1:{console}\n",
            free_port(),
            wav.display(),
            silence.display(),
            rtp,
            rtp + 99
        );
        std::fs::write(dir.path().join("config"), config).expect("config");
        std::fs::write(
            dir.path().join("accounts"),
            format!("<sip:{user}@127.0.0.1>;regint=0\n"),
        )
        .expect("accounts");
        let child = spawn_baresip(
            dir.path(),
            &[
                "-e".into(),
                format!("/dial sip:bot@127.0.0.1:{}", gw.sip_port),
                "-t".into(),
                seconds.to_string(),
            ],
        );
        Caller {
            child,
            console,
            _dir: dir,
        }
    }

    pub fn send_digit(&self, digit: char) {
        baresip_command(self.console, &format!("/sndcode {digit}"));
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// `voicegate replay --json [ARGS] FILE` with configuration `cfg`: the JSON object.
pub fn replay_json(wav: &Path, cfg: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .current_dir(root())
        .args(["replay", "--threads", "1", "--json", "--config"])
        .arg(cfg)
        .args(args)
        .arg(wav)
        .output()
        .expect("replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A quiet caller (`seconds` of silence, then baresip hangs up) calling as
/// `user`; the temporary directory holding its WAV comes along.
pub fn quiet_call(gw: &Gateway, seconds: u32, user: &str) -> (Caller, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let wav = dir.path().join("quiet.wav");
    write_wav_8k(&wav, &vec![0i16; 8000 * seconds as usize]);
    (Caller::dial_as(gw, &wav, seconds + 2, user), dir)
}

/// `voicegate mine RECORDINGS --config CFG`: the snippet, lowercase.
pub fn mine_snippet(cfg: &Path, recordings: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .current_dir(root())
        .args(["mine", "--config"])
        .arg(cfg)
        .arg(recordings)
        .output()
        .expect("mine");
    let snippet = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(out.status.success(), "{snippet}");
    snippet
}

/// `voicegate transcribe FILE` with the default model: the text, lowercase.
pub fn transcribe(wav: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .current_dir(root())
        .arg("transcribe")
        .arg(wav)
        .args(["--threads", "1"])
        .output()
        .expect("transcribe");
    assert!(
        out.status.success(),
        "transcribe {}: {}",
        wav.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

/// The call's first event of `kind` (panics, naming the kind, when there is
/// none).
pub fn event_of<'a>(all: &'a [Value], kind: &str) -> &'a Value {
    all.iter()
        .find(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event: {all:#?}"))
}

/// A call's `events.jsonl`, parsed. Every line the gateway wrote must also
/// read back as a typed [`voicegate::call::CallEvent`] that writes the same
/// fields again: the typed enum is the one definition of every kind.
pub fn events(dir: &Path) -> Vec<Value> {
    let events: Vec<Value> = std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for line in &events {
        let typed: voicegate::call::CallEvent = serde_json::from_value(line.clone())
            .unwrap_or_else(|e| panic!("not a typed event ({e}): {line}"));
        let written = Value::Object(typed.to_json());
        let mut original = line.clone();
        if let Some(o) = original.as_object_mut() {
            o.remove("t_s");
            o.remove("ts");
        }
        assert!(
            same_json(&written, &original),
            "the typed event writes {written}, the gateway wrote {original}"
        );
    }
    events
}

/// Equal JSON, numbers within float rounding (an `f32` field read back).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// The call's stereo recording split into (left = caller, right = gateway).
pub fn stereo(dir: &Path) -> (Vec<i16>, Vec<i16>) {
    let r = hound::WavReader::open(dir.join("call.wav")).expect("call.wav readable");
    assert_eq!(r.spec().channels, 2);
    let s: Vec<i16> = r.into_samples().map(|s| s.expect("sample")).collect();
    let left = s.iter().step_by(2).copied().collect();
    let right = s.iter().skip(1).step_by(2).copied().collect();
    (left, right)
}

/// A mono 8 kHz WAV as samples.
pub fn wav_mono(path: &Path) -> Vec<i16> {
    let r = hound::WavReader::open(path).expect("wav");
    let ch = r.spec().channels as usize;
    let s: Vec<i16> = r.into_samples().map(|s| s.expect("sample")).collect();
    s.chunks(ch).map(|c| c[0]).collect()
}

/// The audio of a SIPp pcap: A-law RTP payloads (PT 8) decoded, in order.
pub fn pcap_alaw_audio(path: &Path) -> Vec<i16> {
    let data = std::fs::read(path).expect("pcap");
    let le = data[0..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32at = |b: &[u8]| {
        if le {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        }
    };
    let linktype = u32at(&data[20..24]);
    let l2 = match linktype {
        1 => 14,   // Ethernet
        113 => 16, // Linux cooked
        101 => 0,  // raw IP
        _ => 14,
    };
    let mut pos = 24;
    let mut out = Vec::new();
    while pos + 16 <= data.len() {
        let incl = u32at(&data[pos + 8..pos + 12]) as usize;
        let pkt = &data[pos + 16..(pos + 16 + incl).min(data.len())];
        pos += 16 + incl;
        if pkt.len() < l2 + 20 {
            continue;
        }
        let ip = &pkt[l2..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip.len() < ihl + 8 + 12 {
            continue;
        }
        let rtp = &ip[ihl + 8..];
        if rtp[0] >> 6 != 2 || rtp[1] & 0x7f != 8 {
            continue;
        }
        let cc = usize::from(rtp[0] & 0x0f);
        out.extend(
            rtp[12 + 4 * cc..]
                .iter()
                .map(|b| voicegate::media::g711::alaw_to_linear(*b)),
        );
    }
    out
}

/// Best normalised cross-correlation of `probe` inside `signal`, over every
/// lag up to `max_lag` samples. Returns (lag, r).
pub fn best_correlation(signal: &[i16], probe: &[i16], max_lag: usize) -> (usize, f64) {
    let n = probe.len().min(16000);
    let probe = &probe[..n];
    let pe: f64 = probe.iter().map(|v| f64::from(*v).powi(2)).sum();
    let mut best = (0, 0.0);
    for lag in 0..=max_lag {
        if lag + n > signal.len() {
            break;
        }
        let win = &signal[lag..lag + n];
        let we: f64 = win.iter().map(|v| f64::from(*v).powi(2)).sum();
        if we == 0.0 || pe == 0.0 {
            continue;
        }
        let dot: f64 = win
            .iter()
            .zip(probe)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let r = dot / (we.sqrt() * pe.sqrt());
        if r > best.1 {
            best = (lag, r);
        }
    }
    best
}

/// A scratch directory for SIPp with the sip-tester pcaps in `pcap/`.
pub fn sipp_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(d.path().join("pcap")).expect("mkdir");
    for e in std::fs::read_dir("/usr/share/sip-tester")
        .expect("sip-tester installed (make test installs it)")
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "pcap") {
            std::fs::copy(e.path(), d.path().join("pcap").join(e.file_name())).expect("copy pcap");
        }
    }
    d
}

/// Run SIPp once against the gateway: `scenario` is a file under
/// `tests/sipp/` (or a path) after `@KEY@` substitutions.
pub fn sipp(gw: &Gateway, scenario: &str, subst: &[(&str, &str)], extra: &[&str]) -> Output {
    let dir = sipp_dir();
    let mut xml =
        std::fs::read_to_string(root().join("tests/sipp").join(scenario)).expect("scenario file");
    for (k, v) in subst {
        xml = xml.replace(&format!("@{k}@"), v);
    }
    let file = dir.path().join(scenario);
    std::fs::write(&file, xml).expect("write scenario");
    let media_port = rtp_base(4);
    let out = Command::new("sipp")
        .current_dir(dir.path())
        .arg(format!("127.0.0.1:{}", gw.sip_port))
        .arg("-sf")
        .arg(&file)
        .args(["-m", "1", "-i", "127.0.0.1", "-mi", "127.0.0.1", "-nostdin"])
        .args(["-p", &free_port().to_string()])
        .args(["-mp", &media_port.to_string()])
        .args([
            "-timeout",
            "40s",
            "-timeout_error",
            "-trace_err",
            "-s",
            "bot",
        ])
        .args(extra)
        .output()
        .expect("run sipp (make test installs sip-tester)");
    if !out.status.success() {
        let errs: String = std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("errors.log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        eprintln!("sipp {scenario} failed: {}\n{errs}", out.status);
    }
    out
}

/// Write a pcap that SIPp's `play_pcap_audio` can play: `wav` (8 kHz mono)
/// as G.711 A-law RTP, one packet per 20 ms.
pub fn rtp_pcap_from_wav(wav: &Path, out: &Path) {
    let samples = wav_mono(wav);
    let mut f: Vec<u8> = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&0i32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    for (i, chunk) in samples.chunks(160).enumerate() {
        let mut rtp = vec![0x80, 8];
        rtp.extend_from_slice(&(i as u16).to_be_bytes());
        rtp.extend_from_slice(&((i * 160) as u32).to_be_bytes());
        rtp.extend_from_slice(&0x5eed_u32.to_be_bytes());
        rtp.extend(
            chunk
                .iter()
                .map(|s| voicegate::media::g711::linear_to_alaw(*s)),
        );
        rtp.resize(12 + 160, 0xd5);
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let mut pkt = vec![0u8; 12];
        pkt.extend_from_slice(&[0x08, 0x00]);
        pkt.extend_from_slice(&[
            0x45,
            0,
            (ip_len >> 8) as u8,
            ip_len as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        pkt.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        pkt.extend_from_slice(&6000u16.to_be_bytes());
        pkt.extend_from_slice(&6000u16.to_be_bytes());
        pkt.extend_from_slice(&(udp_len as u16).to_be_bytes());
        pkt.extend_from_slice(&[0, 0]);
        pkt.extend_from_slice(&rtp);
        let usec = i as u64 * 20_000;
        f.extend_from_slice(&((usec / 1_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&((usec % 1_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        f.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        f.extend_from_slice(&pkt);
    }
    std::fs::write(out, f).expect("write pcap");
}

/// Copy a directory tree (the shipped configuration into a test's own).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

/// Write 8 kHz mono 16-bit samples as a WAV file.
pub fn write_wav_8k(path: &Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create wav");
    for s in samples {
        w.write_sample(*s).expect("sample");
    }
    w.finalize().expect("finalize wav");
}

/// Point `agents.toml` in `cfg` at `members` (one sequential group for every
/// reason), with the whisper accept key on or off.
pub fn agents_at(cfg: &Path, members: &[String], accept_with_dtmf: bool) {
    let list: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
    let text = format!(
        "hold_music = \"prompts/hold.wav\"\n[whisper]\nenabled = true\naccept_with_dtmf = {accept_with_dtmf}\naccept_timeout_s = 10.0\n\
         [[group]]\nname = \"support\"\nstrategy = \"sequential\"\nring_timeout_s = 15.0\nmembers = [{}]\n[routing]\ndefault = [\"support\"]\n",
        list.join(", ")
    );
    std::fs::write(cfg.join("agents.toml"), text).expect("agents.toml");
}

/// Headless Chromium driven over the DevTools protocol: a page is opened and
/// JavaScript evaluated in it (for pages that update live, which
/// `--dump-dom` cannot wait for).
pub struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// Debian's Chromium, headless, with the flags this closed network needs
/// (no background connections, no first-run work) and its own profile.
pub fn headless_chromium(profile: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

impl Browser {
    /// Open `url` in a new headless Chromium.
    pub fn open(url: &str) -> Browser {
        use std::io::BufRead;
        let profile = tempfile::tempdir().expect("tmp");
        let mut child = headless_chromium(profile.path())
            .arg("--remote-debugging-port=0")
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (make test installs it)");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let port = loop {
            let line = lines
                .next()
                .and_then(Result::ok)
                .expect("chromium exited before DevTools listened");
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap_or("").to_string();
            }
        };
        // Keep draining stderr so Chromium never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let deadline = Instant::now() + Duration::from_secs(10);
        let target = loop {
            let (_, body) = http(
                "GET",
                &format!("http://127.0.0.1:{port}/json/list"),
                None,
                None,
            );
            let list: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if let Some(ws) = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            }) {
                break ws;
            }
            assert!(Instant::now() < deadline, "no page target: {body}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ws, _) = tungstenite::connect(target.as_str()).expect("DevTools websocket");
        Browser {
            child,
            ws,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Evaluate `expression` in the page; its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true}});
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .expect("send");
        loop {
            let reply = self.ws.read().expect("DevTools reply");
            if let tungstenite::Message::Text(t) = reply {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                if v["id"] == id {
                    return v["result"]["result"]["value"].clone();
                }
            }
        }
    }

    /// Evaluate `expression` until it returns a string containing every one
    /// of `needles`; that string.
    pub fn wait_text(&mut self, expression: &str, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.eval(expression).as_str().unwrap_or("").to_string();
            if needles.iter().all(|n| text.contains(n)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "page never showed {needles:?}: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}
