//! End-to-end SIP behaviour against a real voicegate process and SIPp.

mod common;

use common::*;
use std::time::Duration;

const PCMU_SDP: &str = "v=0\r\no=u 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio [auto_media_port] RTP/AVP 0\r\na=rtpmap:0 PCMU/8000";

/// Telephony-only gateway: these tests do not need Whisper, and on a 2-core
/// machine parallel recognisers would only slow everything down.
fn no_speech(gateway_toml: &mut String) {
    *gateway_toml = gateway_toml.replace("enabled = true", "enabled = false");
}

fn kinds(dir: &std::path::Path) -> Vec<String> {
    events(dir)
        .iter()
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect()
}

#[test]
fn sipp_trunk_call_is_answered_greeted_recorded_and_hash_ends_it_with_bye() {
    let gw = Gateway::start(|g, _| no_speech(g));
    let out = sipp(
        &gw,
        "call_hash.xml",
        &[("PCAP", "pcap/g711a.pcap"), ("PAUSE", "8500")],
        &[],
    );
    assert!(
        out.status.success(),
        "call with # must end with the gateway's BYE"
    );
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(10));
    let ev = kinds(&dirs[0]);
    for k in [
        "call.invite",
        "call.answered",
        "prompt.started",
        "dtmf",
        "call.hangup",
        "call.ended",
    ] {
        assert!(ev.iter().any(|e| e == k), "missing {k} in {ev:?}");
    }
    let all = events(&dirs[0]);
    let dtmf = all.iter().find(|e| e["kind"] == "dtmf").expect("dtmf");
    assert_eq!(dtmf["digit"], "#");
    assert_eq!(dtmf["source"], "rfc4733");
    let invite = all
        .iter()
        .find(|e| e["kind"] == "call.invite")
        .expect("invite");
    assert_eq!(invite["from"], "+15550123");
    assert_eq!(invite["codec"], "PCMA");
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["reason"], "caller_pressed_hash");
    assert_eq!(hangup["by"], "gateway");

    // The recording: left is what SIPp sent, right is the greeting.
    let (left, right) = stereo(&dirs[0]);
    assert!(
        left.len() > 8000 * 8,
        "recording too short: {} samples",
        left.len()
    );
    let sent = pcap_alaw_audio(&sipp_dir().path().join("pcap/g711a.pcap"));
    assert!(sent.len() > 8000, "pcap audio decoded");
    let probe = &sent[8000..8000 + 8000];
    let (_, r) = best_correlation(&left, probe, 8000 * 4);
    assert!(
        r > 0.9,
        "left channel must carry the caller's audio (r = {r:.3})"
    );
    let greeting = wav_mono(&root().join("sip-config/prompts/greeting.wav"));
    let (lag, r) = best_correlation(&right, &greeting[4000..12000], 8000 * 2);
    assert!(
        r > 0.95,
        "right channel must carry the greeting (r = {r:.3}, lag {lag})"
    );
}

/// SIPp loops its pcap the way its load scenario does: the second play starts
/// the RTP sequence numbers over. The gateway must hear that second play (the
/// jitter buffer starts over from the new numbering instead of calling every
/// packet late), and the # pressed after it.
#[test]
fn a_caller_whose_rtp_numbering_starts_over_is_still_heard() {
    let gw = Gateway::start_with(
        |g, _| no_speech(g),
        |cfg| {
            // The call lasts ~17 s: keep the 15 s wait rule out of it.
            let path = cfg.join("rules.toml");
            let rules = std::fs::read_to_string(&path).expect("rules.toml");
            let (head, tail) = rules.split_once("seconds = 15.0").expect("wait rule");
            std::fs::write(
                &path,
                format!("{head}enabled = false\nseconds = 15.0{tail}"),
            )
            .expect("write rules.toml");
        },
    );
    let out = sipp(
        &gw,
        "loop_twice.xml",
        &[("PCAP", "pcap/g711a.pcap"), ("PAUSE", "8000")],
        &[],
    );
    assert!(
        out.status.success(),
        "the # after the second play ends the call"
    );
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(10));
    let all = events(&dirs[0]);
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["reason"], "caller_pressed_hash");

    let sent = pcap_alaw_audio(&sipp_dir().path().join("pcap/g711a.pcap"));
    let packets = sent.len() / 240;
    let ended = all
        .iter()
        .find(|e| e["kind"] == "call.ended")
        .expect("call.ended");
    let jitter = &ended["media"]["jitter"];
    let received = jitter["received"].as_u64().unwrap_or(0) as usize;
    assert!(
        jitter["restarts"].as_u64().unwrap_or(0) >= 1,
        "the second play restarts the numbering: {jitter}"
    );
    assert!(
        received + 8 >= 2 * packets,
        "both plays accepted ({packets} packets each): {jitter}"
    );

    // The recording's caller side holds the second play too: look for the
    // pcap's second second after the first play has ended (~7 s in).
    let (left, _) = stereo(&dirs[0]);
    let after_first = 8000 * 15 / 2;
    assert!(
        left.len() > after_first + 8000 * 4,
        "recording too short: {} samples",
        left.len()
    );
    let probe = &sent[8000..8000 + 8000];
    let (lag, r) = best_correlation(&left[after_first..], probe, 8000 * 4);
    assert!(
        r > 0.9,
        "the second play is in the recording (r = {r:.3}, lag {lag}): {jitter}"
    );
}

#[test]
fn builtin_uac_pcap_over_tcp_and_udp_caller_bye() {
    let gw = Gateway::start(|g, _| no_speech(g));
    for transport in ["u1", "t1"] {
        let out = sipp(&gw, "options.xml", &[], &["-t", transport]);
        assert!(out.status.success(), "OPTIONS over {transport}");
    }
    let dir = sipp_dir();
    for (i, transport) in ["u1", "t1"].iter().enumerate() {
        let out = std::process::Command::new("sipp")
            .current_dir(dir.path())
            .arg(format!("127.0.0.1:{}", gw.sip_port))
            .args([
                "-sn",
                "uac_pcap",
                "-m",
                "1",
                "-nostdin",
                "-t",
                transport,
                "-i",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &free_port().to_string(),
                "-mp",
                &rtp_base(4).to_string(),
            ])
            .args(["-timeout", "40s", "-timeout_error"])
            .output()
            .expect("sipp");
        assert!(
            out.status.success(),
            "uac_pcap over {transport}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dirs = gw.wait_calls_ended(i + 1, Duration::from_secs(10));
        let newest = dirs
            .iter()
            .max_by_key(|d| {
                std::fs::metadata(d.join("events.jsonl"))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .expect("a call");
        let all = events(newest);
        let hangup = all
            .iter()
            .find(|e| e["kind"] == "call.hangup")
            .expect("hangup");
        assert_eq!(hangup["reason"], "caller_bye", "{transport}");
        assert!(all.iter().any(|e| e["kind"] == "dtmf" && e["digit"] == "1"));
    }
}

#[test]
fn cancel_before_answer_gets_487() {
    let gw = Gateway::start(|g, _| {
        no_speech(g);
        *g = g.replace("answer_delay_ms = 0", "answer_delay_ms = 3000");
    });
    let out = sipp(&gw, "cancel.xml", &[], &[]);
    assert!(out.status.success(), "CANCEL → 200 + 487");
    // A call that was never confirmed leaves a log line, not a recording.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("call ended before it was confirmed") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gw.log().contains("caller_cancel"), "{}", gw.log());
    assert!(gw.call_dirs().is_empty(), "{:?}", gw.call_dirs());
}

#[test]
fn hold_and_unhold_by_reinvite() {
    let gw = Gateway::start(|g, _| no_speech(g));
    let out = sipp(&gw, "hold.xml", &[], &[]);
    assert!(
        out.status.success(),
        "re-INVITE answers must be recvonly then sendrecv"
    );
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(10));
    let all = events(&dirs[0]);
    let re: Vec<_> = all.iter().filter(|e| e["kind"] == "sip.reinvite").collect();
    assert_eq!(re.len(), 2);
    assert_eq!(re[0]["hold"], true);
    assert_eq!(re[1]["hold"], false);
    assert_eq!(re[1]["codec"], "PCMA", "codec change on unhold");
}

#[test]
fn source_outside_every_acl_gets_403() {
    let gw = Gateway::start(|g, t| {
        no_speech(g);
        *t = t.replace(
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "allow = [\"192.0.2.10\"]",
        );
    });
    let sdp = PCMU_SDP.replace("\r\n", "\n");
    let out = sipp(
        &gw,
        "invite_expect.xml",
        &[("SDP", &sdp), ("STATUS", "403")],
        &[],
    );
    assert!(out.status.success());
    assert!(gw.call_dirs().is_empty(), "a refused call records nothing");
    assert!(gw.log().contains("outside every trunk ACL"));
}

#[test]
fn an_acl_refusal_tells_the_sender_nothing_more_than_403() {
    let gw = Gateway::start(|g, t| {
        no_speech(g);
        *t = t.replace(
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "allow = [\"192.0.2.10\"]",
        );
    });
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let me = sock.local_addr().expect("addr");
    let target = format!("127.0.0.1:{}", gw.sip_port);
    let sdp = PCMU_SDP.replace("[auto_media_port]", "40000") + "\r\n";
    let invite = format!(
        "INVITE sip:bot@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKprobe1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p1\r\nTo: <sip:bot@{target}>\r\n\
         Call-ID: probe-1@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:probe@{me}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    sock.send_to(invite.as_bytes(), &target).expect("send");
    let mut buf = [0u8; 4096];
    let mut answer = String::new();
    while let Ok((len, _)) = sock.recv_from(&mut buf) {
        answer = String::from_utf8_lossy(&buf[..len]).to_string();
        if !answer.starts_with("SIP/2.0 100") {
            break;
        }
    }
    assert!(answer.starts_with("SIP/2.0 403"), "{answer}");
    assert!(
        !answer.contains("Warning"),
        "the reason stays in the log: {answer}"
    );
    assert!(gw.log().contains("outside every trunk ACL"));
}

#[test]
fn digest_wrong_password_is_401_then_403_and_right_one_is_answered() {
    let gw = Gateway::start(|g, t| {
        no_speech(g);
        *t = t.replace(
            "# [trunk.auth]\n# username = \"carrier\"\n# password = \"secret\"\n# realm = \"voicegate\"",
            "[trunk.auth]\nusername = \"carrier\"\npassword = \"secret\"\nrealm = \"voicegate\"",
        );
    });
    let ack_403 = "<send><![CDATA[\nACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n[last_Via:]\nFrom: <sip:carrier@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]\nTo: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]\nCall-ID: [call_id]\nCSeq: 2 ACK\nMax-Forwards: 70\nContent-Length: 0\n]]></send>";
    let out = sipp(
        &gw,
        "digest.xml",
        &[("STATUS", "403"), ("AFTER", ack_403)],
        &["-au", "carrier", "-ap", "wrong"],
    );
    assert!(out.status.success(), "wrong password: 401 then 403");
    let ack_bye = "<send><![CDATA[\nACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\nFrom: <sip:carrier@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]\nTo: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]\nCall-ID: [call_id]\nCSeq: 2 ACK\nMax-Forwards: 70\nContent-Length: 0\n]]></send>\n<pause milliseconds=\"500\"/>\n<send retrans=\"500\"><![CDATA[\nBYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\nFrom: <sip:carrier@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]\nTo: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]\nCall-ID: [call_id]\nCSeq: 3 BYE\nMax-Forwards: 70\nContent-Length: 0\n]]></send>\n<recv response=\"200\"/>";
    let out = sipp(
        &gw,
        "digest.xml",
        &[("STATUS", "200"), ("AFTER", ack_bye)],
        &["-au", "carrier", "-ap", "secret"],
    );
    assert!(out.status.success(), "right password: 401 then 200");
    assert_eq!(gw.wait_calls_ended(1, Duration::from_secs(10)).len(), 1);
}

#[test]
fn bad_sdp_is_400_no_common_codec_is_488_and_garbage_does_not_hurt() {
    let gw = Gateway::start(|g, _| no_speech(g));
    let out = sipp(
        &gw,
        "invite_expect.xml",
        &[("SDP", "this is not SDP"), ("STATUS", "400")],
        &[],
    );
    assert!(out.status.success(), "malformed SDP → 400");
    let g722 = PCMU_SDP
        .replace("RTP/AVP 0", "RTP/AVP 9")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:9 G722/8000")
        .replace("\r\n", "\n");
    let out = sipp(
        &gw,
        "invite_expect.xml",
        &[("SDP", &g722), ("STATUS", "488")],
        &[],
    );
    assert!(out.status.success(), "no common codec → 488");

    // Raw garbage and broken requests straight at the SIP port.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let target = format!("127.0.0.1:{}", gw.sip_port);
    let junk: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02garbage".to_vec(),
        b"INVITE\r\n\r\n".to_vec(),
        b"INVITE sip:bot@127.0.0.1 SIP/2.0\r\nVia: nonsense\r\nContent-Length: 99999\r\n\r\n".to_vec(),
        b"INVITE sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: broken-1\r\nCSeq: x INVITE\r\nContent-Length: 0\r\n\r\n".to_vec(),
        vec![0xff; 3000],
    ];
    for j in &junk {
        sock.send_to(j, &target).expect("send");
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut gw = gw;
    assert!(gw.alive(), "gateway must survive malformed input");
    let out = sipp(&gw, "hold.xml", &[], &[]);
    assert!(
        out.status.success(),
        "a normal call still works after garbage"
    );
}

#[test]
fn a_call_without_rtp_is_ended_with_bye() {
    let gw = Gateway::start(|g, _| {
        no_speech(g);
        *g = g.replace("rtp_timeout_s = 30", "rtp_timeout_s = 2");
    });
    let out = sipp(&gw, "silent.xml", &[], &[]);
    assert!(
        out.status.success(),
        "gateway must send BYE after the RTP timeout"
    );
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(10));
    let all = events(&dirs[0]);
    let ended = all
        .iter()
        .find(|e| e["kind"] == "call.ended")
        .expect("ended");
    assert_eq!(ended["reason"], "rtp_timeout");
    let t = ended["t_s"].as_f64().unwrap_or(0.0);
    assert!((2.0..5.0).contains(&t), "ended at {t}s");
}

#[test]
fn crash_mid_call_leaves_a_recording_that_is_repaired_on_restart() {
    let mut gw = Gateway::start(|g, _| {
        no_speech(g);
        *g = g.replace("flush_interval_ms = 1000", "flush_interval_ms = 200");
    });
    let dir = sipp_dir();
    let mut caller = std::process::Command::new("sipp")
        .current_dir(dir.path())
        .arg(format!("127.0.0.1:{}", gw.sip_port))
        .args(["-sn", "uac_pcap", "-m", "1", "-nostdin", "-i", "127.0.0.1"])
        .args([
            "-p",
            &free_port().to_string(),
            "-mp",
            &rtp_base(4).to_string(),
        ])
        .args(["-timeout", "20s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sipp");
    // Killed once over 3 s of the call are on disk (a flush every 200 ms),
    // however long the call took to come up on a busy box.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !gw
        .call_dirs()
        .iter()
        .any(|d| std::fs::metadata(d.join("call.wav")).is_ok_and(|m| m.len() > 44 + 3 * 8000 * 4))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no call recorded:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    gw.kill9();
    let _ = caller.kill();
    let _ = caller.wait();
    let dirs = gw.call_dirs();
    assert_eq!(dirs.len(), 1);
    assert!(
        dirs[0].join(".recording").exists(),
        "unfinished recording is marked"
    );
    gw.spawn();
    let all = events(&dirs[0]);
    assert!(
        all.iter().any(|e| e["kind"] == "recording.repaired"),
        "{all:?}"
    );
    assert!(!dirs[0].join(".recording").exists());
    let (left, right) = stereo(&dirs[0]);
    let secs = left.len() as f64 / 8000.0;
    assert!(
        secs > 2.5,
        "repaired recording plays to the last flush: {secs:.2}s"
    );
    assert_eq!(left.len(), right.len());
}

#[test]
fn sipp_caller_speech_is_transcribed_into_events() {
    let gw = Gateway::start(|_, _| {});
    let tmp = tempfile::tempdir().expect("tempdir");
    let pcap = tmp.path().join("angry.pcap");
    rtp_pcap_from_wav(&root().join("tests/calls/angry_words.wav"), &pcap);
    let pcap = pcap.display().to_string();
    let out = sipp(
        &gw,
        "call_hash.xml",
        &[("PCAP", &pcap), ("PAUSE", "16500")],
        &[],
    );
    assert!(out.status.success());
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(15));
    let all = events(&dirs[0]);
    let text: Vec<String> = all
        .iter()
        .filter(|e| e["kind"] == "utterance")
        .map(|e| e["text"].as_str().unwrap_or("").to_lowercase())
        .collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(text[1].contains("ridiculous"), "{text:?}");
    let u = all
        .iter()
        .find(|e| e["kind"] == "utterance")
        .expect("utterance");
    let start = u["start_s"].as_f64().unwrap_or(-1.0);
    assert!(
        (0.6..1.4).contains(&start),
        "first utterance starts near 1.0 s: {start}"
    );
}

#[test]
fn outbound_register_answers_the_challenge_and_refreshes_before_expiry() {
    let registrar_port = free_port();
    let dir = sipp_dir();
    std::fs::copy(
        root().join("tests/sipp/registrar.xml"),
        dir.path().join("registrar.xml"),
    )
    .expect("copy");
    let mut registrar = std::process::Command::new("sipp")
        .current_dir(dir.path())
        .args([
            "-sf",
            "registrar.xml",
            "-m",
            "1",
            "-nostdin",
            "-i",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &registrar_port.to_string(),
            "-timeout",
            "40s",
            "-timeout_error",
            "-trace_err",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sipp registrar");
    std::thread::sleep(Duration::from_millis(500));
    let gw = Gateway::start(|g, t| {
        no_speech(g);
        *t = t.replace(
            "# [trunk.register]\n# registrar = \"sip:203.0.113.10:5060\"\n# user = \"15550100\"\n# password = \"secret\"\n# expiry_s = 3600\n# refresh_before_s = 60",
            &format!("[trunk.register]\nregistrar = \"sip:127.0.0.1:{registrar_port}\"\nuser = \"voicegate\"\npassword = \"secret\"\nexpiry_s = 40\nrefresh_before_s = 30"),
        );
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = registrar.try_wait() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = registrar.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = gw.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "registrar saw a valid digest and a refresh:\n{log}"
    );
    assert!(
        log.matches("registered").count() >= 2,
        "initial registration and refresh logged:\n{log}"
    );
    // Operators see it in the metrics.
    let (_, metrics) = gw.get("/metrics", None);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("voicegate_registrations{trunk=") && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn a_via_received_written_by_the_sender_does_not_pass_the_trunk_acl() {
    // The trunk admits 127.0.0.1 only; the attacker sends from 127.0.0.2 and
    // writes `received=127.0.0.1` into its Via — once with its real address as
    // the sent-by (the stack then keeps the parameter), once with another.
    let gw = Gateway::start(|g, t| {
        no_speech(g);
        *t = t.replace(
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "allow = [\"127.0.0.1/32\"]",
        );
    });
    let sock = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let me = sock.local_addr().expect("addr");
    // Responses follow the Via's received=: listen there too.
    let decoy = std::net::UdpSocket::bind(("127.0.0.1", me.port())).ok();
    for s in std::iter::once(&sock).chain(decoy.as_ref()) {
        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    }
    let target = format!("127.0.0.1:{}", gw.sip_port);
    let sdp = PCMU_SDP.replace("[auto_media_port]", "40000") + "\r\n";
    let mut statuses = Vec::new();
    for (n, sent_by) in [me.to_string(), "127.0.0.1:5999".to_string()]
        .iter()
        .enumerate()
    {
        let invite = format!(
            "INVITE sip:bot@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {sent_by};received=127.0.0.1;branch=z9hG4bKspoof{n}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:attacker@127.0.0.1>;tag=spoof{n}\r\n\
             To: <sip:bot@{target}>\r\n\
             Call-ID: spoof-{n}@127.0.0.2\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:attacker@{me}>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sock.send_to(invite.as_bytes(), &target).expect("send");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < deadline
            && gw.log().matches("outside every trunk ACL").count() <= n
        {
            for s in std::iter::once(&sock).chain(decoy.as_ref()) {
                if let Ok((len, _)) = s.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..len]).to_string();
                    statuses.push(text.split_whitespace().nth(1).unwrap_or("").to_string());
                }
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !statuses.iter().any(|s| s == "180" || s.starts_with('2')),
        "a spoofed Via was answered: {statuses:?}"
    );
    assert!(
        gw.log().matches("outside every trunk ACL").count() >= 2,
        "both attempts refused by the ACL:\n{}",
        gw.log()
    );
    assert!(gw.call_dirs().is_empty(), "no call was answered");
}

/// A raw SIP client on one UDP socket: INVITEs with an optional
/// `Authorization`, the final answer read back.
struct RawInviter {
    sock: std::net::UdpSocket,
    target: String,
    cseq: u32,
    /// The RTP port our SDP offers.
    media_port: u16,
    /// An SDP direction attribute to offer (`a=inactive`, …), if any.
    direction: Option<&'static str>,
}

impl RawInviter {
    fn new(gw: &Gateway) -> Self {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
        Self {
            sock,
            target: format!("127.0.0.1:{}", gw.sip_port),
            cseq: 0,
            media_port: 40002,
            direction: None,
        }
    }

    /// Send an INVITE on `call_id`; the final response (status, whole text).
    fn invite(&mut self, call_id: &str, auth: Option<&str>) -> (u16, String) {
        self.cseq += 1;
        let (me, target, cseq) = (
            self.sock.local_addr().expect("addr"),
            &self.target,
            self.cseq,
        );
        let sdp = PCMU_SDP.replace("[auto_media_port]", &self.media_port.to_string())
            + "\r\n"
            + &self
                .direction
                .map(|d| format!("{d}\r\n"))
                .unwrap_or_default();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let invite = format!(
            "INVITE sip:bot@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKsec{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:carrier@{me}>;tag=s{cseq}\r\nTo: <sip:bot@{target}>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:carrier@{me}>\r\n{auth}\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        // Like a real UA over UDP: retransmit until a response arrives
        // (RFC 3261 timer A, 500 ms doubling), for up to ~8 s.
        let mut buf = [0u8; 8192];
        let mut provisional = false;
        for attempt in 0..5u32 {
            if !provisional {
                self.sock.send_to(invite.as_bytes(), target).expect("send");
            }
            let until = std::time::Instant::now() + Duration::from_millis(500 << attempt);
            while std::time::Instant::now() < until {
                let Ok((len, _)) = self.sock.recv_from(&mut buf) else {
                    break;
                };
                let text = String::from_utf8_lossy(&buf[..len]).to_string();
                let status: u16 = text.get(8..11).and_then(|s| s.parse().ok()).unwrap_or(0);
                if !text.contains(&format!("CSeq: {cseq} INVITE")) {
                    continue;
                }
                if status >= 200 {
                    if status >= 300 {
                        self.ack(call_id, &text);
                    }
                    return (status, text);
                }
                provisional = true;
            }
        }
        (0, String::new())
    }

    fn ack(&self, call_id: &str, response: &str) {
        let me = self.sock.local_addr().expect("addr");
        let to = response
            .lines()
            .find(|l| l.starts_with("To:"))
            .unwrap_or("To: <sip:bot@127.0.0.1>");
        let ack = format!(
            "ACK sip:bot@{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKsec{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:carrier@{me}>;tag=s{}\r\n{to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            self.target, self.cseq, self.cseq, self.cseq
        );
        let _ = self.sock.send_to(ack.as_bytes(), &self.target);
    }
}

/// The `Authorization` answering a 401's challenge.
fn digest_answer(challenge: &str, user: &str, password: &str, nc: u32) -> String {
    use md5::{Digest, Md5};
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default();
    let h = |s: String| hex::encode(Md5::digest(s.as_bytes()));
    let uri = "sip:bot@127.0.0.1";
    let ha1 = h(format!("{user}:voicegate:{password}"));
    let ha2 = h(format!("INVITE:{uri}"));
    let r = h(format!("{ha1}:{nonce}:{nc:08x}:c0ffee:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"voicegate\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\", algorithm=MD5, qop=auth, cnonce=\"c0ffee\", nc={nc:08x}"
    )
}

#[test]
fn digest_nonces_are_opaque_one_call_each_and_a_guessing_source_is_banned() {
    let gw = Gateway::start(|g, t| {
        no_speech(g);
        *t = t.replace(
            "# [trunk.auth]\n# username = \"carrier\"\n# password = \"secret\"\n# realm = \"voicegate\"",
            "[trunk.auth]\nusername = \"carrier\"\npassword = \"secret\"\nrealm = \"voicegate\"",
        );
    });
    let mut sip = RawInviter::new(&gw);
    let (status, challenge) = sip.invite("sec-1@127.0.0.1", None);
    assert_eq!(status, 401, "{challenge}");
    let nonce_line = challenge
        .lines()
        .find(|l| l.starts_with("WWW-Authenticate"))
        .expect("challenge")
        .to_string();
    let now_hex = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    assert!(
        !nonce_line.contains(&now_hex[..6]),
        "the nonce does not carry the clock: {nonce_line}"
    );
    let right = digest_answer(&nonce_line, "carrier", "secret", 1);
    let (status, ok) = sip.invite("sec-1@127.0.0.1", Some(&right));
    assert_eq!(status, 200, "{ok}");
    sip.ack("sec-1@127.0.0.1", &ok);
    // A captured Authorization replayed on new calls is challenged afresh.
    for n in 2..5 {
        let (status, text) = sip.invite(&format!("sec-{n}@127.0.0.1"), Some(&right));
        assert_eq!(status, 401, "replay on a new Call-ID: {text}");
    }
    // Wrong passwords: the same 403 each time, and after 20 the source is banned —
    // then even the right password is refused.
    for i in 0..20 {
        let call = format!("guess-{i}@127.0.0.1");
        let (status, challenge) = sip.invite(&call, None);
        assert_eq!(status, 401);
        let guess = digest_answer(&challenge, "carrier", &format!("guess{i}"), 1);
        let (status, text) = sip.invite(&call, Some(&guess));
        assert_eq!(status, 403, "{text}");
        assert!(!text.contains("Warning"), "{text}");
    }
    let (status, text) = sip.invite("after-ban@127.0.0.1", None);
    assert_eq!(
        status, 403,
        "banned sources are not even challenged: {text}"
    );
    let log = gw.log();
    assert!(
        log.contains("SIP source 127.0.0.1 banned for 600 s"),
        "{log}"
    );
    assert_eq!(
        log.matches("SIP auth failed from 127.0.0.1").count(),
        20,
        "{log}"
    );
    assert_eq!(
        gw.call_dirs().len(),
        1,
        "only the authenticated call was recorded"
    );
    // The operator sees it in /metrics.
    let (code, metrics) = gw.get("/metrics", None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("voicegate_sip_rejections_total{cause=\"auth\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("voicegate_sip_rejections_total{cause=\"banned\"} 1"),
        "{metrics}"
    );
}

/// One RTP packet of PCMU with every byte `byte` (0x00 is loud, 0xff silent).
fn pcmu_packet(seq: u16, ssrc: u32, byte: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend(seq.to_be_bytes());
    p.extend((u32::from(seq) * 160).to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(byte, 160));
    p
}

#[test]
fn an_rtp_spray_before_the_callers_first_packet_never_takes_the_call() {
    let gw = Gateway::start(|g, _| no_speech(g));
    let caller_media = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    caller_media.set_nonblocking(true).ok();
    let mut sip = RawInviter::new(&gw);
    sip.media_port = caller_media.local_addr().expect("addr").port();
    let (status, ok) = sip.invite("spray-1@127.0.0.1", None);
    assert_eq!(status, 200, "{ok}");
    sip.ack("spray-1@127.0.0.1", &ok);
    let port: u16 = ok
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("gateway RTP port");
    let gateway_rtp = format!("127.0.0.1:{port}");
    // The attacker: another address, spraying loud audio from before the
    // caller's first packet to after it.
    let attacker = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    attacker.set_nonblocking(true).ok();
    let mut buf = [0u8; 2048];
    let (mut to_attacker, mut to_caller) = (0, 0);
    for i in 0..150u16 {
        attacker
            .send_to(&pcmu_packet(i, 0xbad, 0x00), &gateway_rtp)
            .expect("spray");
        if i >= 25 {
            caller_media
                .send_to(&pcmu_packet(i - 25, 0x600d, 0xfe), &gateway_rtp)
                .expect("caller");
        }
        std::thread::sleep(Duration::from_millis(20));
        while attacker.recv_from(&mut buf).is_ok() {
            to_attacker += 1;
        }
        while caller_media.recv_from(&mut buf).is_ok() {
            to_caller += 1;
        }
    }
    assert_eq!(to_attacker, 0, "the bot's audio never goes to the sprayer");
    assert!(to_caller > 50, "the caller hears the bot: {to_caller}");
    // Hang up and read the recording: the caller's channel has no spray in it.
    sip.bye("spray-1@127.0.0.1", &ok);
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(10));
    let (caller_track, _) = stereo(&dirs[0]);
    let loudest = caller_track
        .iter()
        .map(|s| s.unsigned_abs())
        .max()
        .unwrap_or(0);
    assert!(
        loudest < 1000,
        "the sprayer's audio reached the recording: {loudest}"
    );
    let ended = events(&dirs[0]);
    let media = ended
        .iter()
        .find(|e| e["kind"] == "call.ended")
        .map(|e| e["media"].clone())
        .expect("ended");
    assert!(
        media["wrong_source"].as_u64().unwrap_or(0) >= 100,
        "the spray was counted and dropped: {media}"
    );
}

#[test]
fn escape_sequences_in_a_call_id_do_not_reach_the_log_raw() {
    let gw = Gateway::start(|g, _| no_speech(g));
    let mut sip = RawInviter::new(&gw);
    let evil = "evil\u{1b}[2J\u{1b}[31mred\rINFO forged line@127.0.0.1";
    let (status, text) = sip.invite(evil, None);
    assert!(status == 200 || status >= 400, "{status} {text}");
    if status == 200 {
        sip.ack(evil, &text);
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = gw.log();
    assert!(log.contains("evil"), "the call was logged: {log}");
    assert!(!log.contains('\u{1b}'), "raw ESC in the log: {log:?}");
    assert!(
        !log.contains("red\rINFO"),
        "a bare CR could forge a log line: {log:?}"
    );
}

impl RawInviter {
    /// OPTIONS (a dispatcher's probe); the answer.
    fn options(&mut self) -> (u16, String) {
        self.cseq += 1;
        let (me, target, cseq) = (
            self.sock.local_addr().expect("addr"),
            &self.target,
            self.cseq,
        );
        let req = format!(
            "OPTIONS sip:bot@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKopt{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=o{cseq}\r\nTo: <sip:bot@{target}>\r\n\
             Call-ID: probe-{cseq}@127.0.0.1\r\nCSeq: {cseq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        self.sock.send_to(req.as_bytes(), target).expect("send");
        let mut buf = [0u8; 4096];
        while let Ok((len, _)) = self.sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            if text.contains(&format!("CSeq: {cseq} OPTIONS")) {
                let status = text.get(8..11).and_then(|s| s.parse().ok()).unwrap_or(0);
                return (status, text);
            }
        }
        (0, String::new())
    }

    fn bye(&mut self, call_id: &str, ok: &str) {
        self.cseq += 1;
        let me = self.sock.local_addr().expect("addr");
        let to = ok
            .lines()
            .find(|l| l.starts_with("To:"))
            .unwrap_or("To: <sip:bot@127.0.0.1>");
        let from_tag = ok
            .lines()
            .find(|l| l.starts_with("From:"))
            .and_then(|l| l.split(";tag=").nth(1))
            .unwrap_or("s1");
        let bye = format!(
            "BYE sip:bot@{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKbye{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:carrier@{me}>;tag={from_tag}\r\n{to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {} BYE\r\nContent-Length: 0\r\n\r\n",
            self.target, self.cseq, self.cseq
        );
        self.sock
            .send_to(bye.as_bytes(), &self.target)
            .expect("bye");
    }
}

#[test]
fn at_max_calls_invites_and_probes_get_503_with_retry_after_then_recover() {
    let gw = Gateway::start(|g, _| {
        no_speech(g);
        *g = g.replace("max_calls = 0", "max_calls = 1");
    });
    let mut sip = RawInviter::new(&gw);
    let (status, text) = sip.options();
    assert_eq!(status, 200, "healthy: {text}");
    let (status, first) = sip.invite("cap-1@127.0.0.1", None);
    assert_eq!(status, 200, "{first}");
    sip.ack("cap-1@127.0.0.1", &first);
    let (status, text) = sip.options();
    assert_eq!(
        status, 503,
        "full: the dispatcher must route around: {text}"
    );
    assert!(text.contains("Retry-After: 5"), "{text}");
    let (status, text) = sip.invite("cap-2@127.0.0.1", None);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("Retry-After: 5"), "{text}");
    // The call in progress is not disturbed; once it ends the node is back.
    sip.bye("cap-1@127.0.0.1", &first);
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(10));
    assert_eq!(dirs.len(), 1, "only the admitted call was recorded");
    // The finished call's dialog is gone: a late BYE finds nothing.
    std::thread::sleep(Duration::from_millis(300));
    sip.bye("cap-1@127.0.0.1", &first);
    let mut buf = [0u8; 4096];
    let mut late = String::new();
    while let Ok((len, _)) = sip.sock.recv_from(&mut buf) {
        late = String::from_utf8_lossy(&buf[..len]).to_string();
        if late.contains(&format!("CSeq: {} BYE", sip.cseq)) {
            break;
        }
    }
    assert!(late.starts_with("SIP/2.0 481"), "{late}");
    let mut back = 0;
    for _ in 0..20 {
        back = sip.options().0;
        if back == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(back, 200, "healthy again after the call ended");
    let (_, metrics) = gw.get("/metrics", None);
    assert!(
        metrics.contains("voicegate_sip_rejections_total{cause=\"max_calls\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_caller_who_holds_and_vanishes_is_hung_up_after_hold_timeout() {
    let gw = Gateway::start(|g, _| {
        no_speech(g);
        *g = g.replace("hold_timeout_s = 300", "hold_timeout_s = 2");
    });
    let mut sip = RawInviter::new(&gw);
    sip.direction = Some("a=inactive");
    let (status, ok) = sip.invite("held-1@127.0.0.1", None);
    assert_eq!(status, 200, "{ok}");
    sip.ack("held-1@127.0.0.1", &ok);
    // Nothing more from the caller: no RTP, no BYE.
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(15));
    let all = events(&dirs[0]);
    let hangup = event_of(&all, "call.hangup");
    assert_eq!(hangup["reason"], "hold_timeout", "{hangup}");
    assert_eq!(hangup["by"], "gateway");
    let t = hangup["t_s"].as_f64().unwrap_or(0.0);
    assert!((2.0..6.0).contains(&t), "after the 2 s hold limit: {t}");
}

#[test]
fn with_few_file_descriptors_new_calls_get_503_and_the_calls_up_carry_on() {
    let mut gw = Gateway::start_limited(200, |g, _| no_speech(g));
    let mut sip = RawInviter::new(&gw);
    let mut up: Vec<(String, String)> = Vec::new();
    let mut refused = None;
    for n in 0..100 {
        let call = format!("fd-{n}@127.0.0.1");
        let (status, text) = sip.invite(&call, None);
        match status {
            200 => {
                sip.ack(&call, &text);
                up.push((call, text));
            }
            503 => {
                refused = Some(text);
                break;
            }
            other => panic!("call {n}: {other} {text}"),
        }
    }
    let refused = refused.expect("a 503 before the descriptors ran out");
    assert!(refused.contains("Retry-After"), "{refused}");
    assert!(up.len() >= 10, "calls were admitted first: {}", up.len());
    assert!(gw.alive(), "the gateway is still running:\n{}", gw.log());
    // The calls up end normally, recordings complete; then calls come in again.
    for (call, ok) in &up {
        sip.bye(call, ok);
    }
    let dirs = gw.wait_calls_ended(up.len(), Duration::from_secs(30));
    assert_eq!(dirs.len(), up.len());
    std::thread::sleep(Duration::from_millis(500));
    let (status, text) = sip.invite("fd-after@127.0.0.1", None);
    assert_eq!(status, 200, "room again: {text}");
    sip.ack("fd-after@127.0.0.1", &text);
    let (_, metrics) = gw.get("/metrics", None);
    assert!(
        metrics.contains("voicegate_sip_rejections_total{cause=\"fds\"} 1"),
        "{metrics}"
    );
}

#[test]
fn an_invite_flood_from_one_source_is_cut_at_its_rate_and_others_still_get_through() {
    let gw = Gateway::start(|g, _| no_speech(g));
    let flood = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let me = flood.local_addr().expect("addr");
    let target = format!("127.0.0.1:{}", gw.sip_port);
    let sdp = PCMU_SDP.replace("[auto_media_port]", "40010") + "\r\n";
    // 400 never-ACKed INVITEs in 0.2 s (bounded).
    for n in 0..400 {
        let invite = format!(
            "INVITE sip:bot@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKfl{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:flood@{me}>;tag=f{n}\r\nTo: <sip:bot@{target}>\r\n\
             Call-ID: flood-{n}@127.0.0.2\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@{me}>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        flood.send_to(invite.as_bytes(), &target).expect("send");
        if n % 40 == 39 {
            // 2,000 INVITEs a second, paced so the socket buffer, not the
            // limiter, is not what drops them.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A caller from elsewhere (here the exempt loopback address) is served.
    let mut sip = RawInviter::new(&gw);
    let (status, ok) = sip.invite("beside-flood@127.0.0.1", None);
    assert_eq!(status, 200, "{ok}");
    sip.ack("beside-flood@127.0.0.1", &ok);
    std::thread::sleep(Duration::from_secs(1));
    // Admitted flood INVITEs are answered but never ACKed: half-open, and
    // nothing of them reaches the disk.
    let admitted = metric(&gw, "voicegate_calls_setting_up").unwrap_or(0.0) as usize;
    assert!(
        admitted <= 40 + 10,
        "the flood was cut at its burst and rate: {admitted} calls in set-up"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.call_dirs().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        gw.call_dirs().len(),
        1,
        "only the ACKed caller is recorded: {:?}",
        gw.call_dirs()
    );
    let log = gw.log();
    assert_eq!(
        log.matches("SIP INVITE flood from 127.0.0.2").count(),
        1,
        "one line per source per 10 s"
    );
    let (_, metrics) = gw.get("/metrics", None);
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("voicegate_sip_rejections_total{cause=\"rate\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        dropped >= 200,
        "{dropped} dropped, {admitted} admitted\n{metrics}"
    );
}

#[test]
fn behind_a_trusted_proxy_the_flood_limit_judges_each_caller_not_the_proxy() {
    // 127.0.0.2 is a dispatcher in front (trusted, not exempt): it relays a
    // flood from one caller and a call from another. The flooding caller is
    // cut at its burst; the other caller, through the same proxy, is served.
    let gw = Gateway::start(|g, t| {
        no_speech(g);
        *g = g.replace(
            "trusted_proxies = []",
            "trusted_proxies = [\"127.0.0.2/32\"]",
        );
        *t = t.replace(
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "allow = [\"127.0.0.0/8\", \"10.0.0.0/8\", \"::1/128\"]",
        );
    });
    let proxy = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let me = proxy.local_addr().expect("addr");
    let target = format!("127.0.0.1:{}", gw.sip_port);
    for n in 0..300 {
        let invite = bare_invite(
            &target,
            &me,
            &format!("pf{n}"),
            "X-Forwarded-For: 10.1.1.1\r\n",
        );
        proxy.send_to(invite.as_bytes(), &target).expect("send");
        if n % 40 == 39 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut other = RawUa::new("127.0.0.2", &gw, "pother");
    let ok = other.invite("X-Forwarded-For: 10.2.2.2\r\n");
    assert_eq!(
        status_of(&ok),
        "200",
        "another caller through the same proxy is served: {ok}\n{}",
        gw.log()
    );
    other.ack();
    std::thread::sleep(Duration::from_secs(1));
    let admitted = metric(&gw, "voicegate_calls_setting_up").unwrap_or(0.0) as usize;
    assert!(
        admitted <= 40 + 10,
        "the flooding caller was cut at its burst: {admitted} calls in set-up"
    );
    let log = gw.log();
    assert_eq!(
        log.matches("SIP INVITE flood from 10.1.1.1").count(),
        1,
        "the caller, not the proxy, is named:\n{log}"
    );
    assert!(!log.contains("SIP INVITE flood from 127.0.0.2"), "{log}");
    assert!(!log.contains("SIP INVITE flood from 10.2.2.2"), "{log}");
    let rejected = metric(&gw, "voicegate_sip_rejections_total{cause=\"rate\"}").unwrap_or(0.0);
    assert!(rejected >= 200.0, "{rejected} dropped, {admitted} admitted");
}

#[test]
fn an_ended_call_leaves_no_sip_dialog_or_transaction_behind() {
    let gw = Gateway::start(|g, _| no_speech(g));
    // A normal call: its dialog leaves the stack with it.
    let mut ua = RawUa::new("127.0.0.1", &gw, "release");
    let ok = ua.invite("");
    assert_eq!(status_of(&ok), "200", "{ok}\n{}", gw.log());
    ua.ack();
    wait_metric(&gw, "voicegate_active_calls", 1.0);
    assert!(metric(&gw, "voicegate_sip_dialogs").unwrap_or(0.0) >= 1.0);
    assert_eq!(status_of(&ua.request("BYE", "")), "200");
    assert_eq!(gw.wait_calls_ended(1, Duration::from_secs(10)).len(), 1);
    wait_metric(&gw, "voicegate_sip_dialogs", 0.0);
    wait_metric(&gw, "voicegate_sip_transactions", 0.0);
    // A caller who hangs up without ever ACKing our 200 OK: the stack would
    // retransmit it for 64·T1 = 32 s, holding the transaction and its
    // dialog; the call's end stops that at once.
    let mut gone = RawUa::new("127.0.0.1", &gw, "noack");
    assert_eq!(status_of(&gone.invite("")), "200");
    assert_eq!(status_of(&gone.request("BYE", "")), "200");
    let ended = std::time::Instant::now();
    assert_eq!(gw.wait_calls_ended(2, Duration::from_secs(10)).len(), 2);
    wait_metric(&gw, "voicegate_sip_transactions", 0.0);
    wait_metric(&gw, "voicegate_sip_dialogs", 0.0);
    assert!(
        ended.elapsed() < Duration::from_secs(25),
        "released {:?} after the BYE, not at the stack's 32 s",
        ended.elapsed()
    );
}

#[test]
fn a_bye_that_overtakes_its_ack_leaves_the_call_recorded() {
    // UDP may reorder: the caller ACKs our 200 OK and hangs up at once, and
    // the BYE arrives first. The call was confirmed (a BYE can only follow
    // the ACK): it is recorded, not lost.
    let gw = Gateway::start(|g, _| no_speech(g));
    let mut ua = RawUa::new("127.0.0.1", &gw, "overtake");
    let ok = ua.invite("");
    assert_eq!(status_of(&ok), "200", "{ok}\n{}", gw.log());
    let bye = ua.request("BYE", "");
    ua.ack();
    assert_eq!(status_of(&bye), "200", "{bye}\n{}", gw.log());
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(10));
    assert_eq!(
        dirs.len(),
        1,
        "the call is recorded: {dirs:?}\n{}",
        gw.log()
    );
    let all = events(&dirs[0]);
    let kinds: Vec<&str> = all.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["call.invite", "call.confirmed", "call.ended"],
        "{all:?}"
    );
    assert_eq!(all[2]["reason"], "caller_bye", "{all:?}");
}

#[test]
fn only_a_trusted_proxy_names_the_caller_the_acl_judges() {
    // The trunk admits 10.1.1.1 only. A dispatcher on 127.0.0.1 is trusted
    // and writes the caller's address in X-Forwarded-For; 127.0.0.2 is not.
    let gw = Gateway::start(|g, t| {
        no_speech(g);
        *g = g.replace(
            "trusted_proxies = []",
            "trusted_proxies = [\"127.0.0.1/32\"]",
        );
        *t = t.replace(
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "allow = [\"10.1.1.1/32\"]",
        );
    });
    let final_status = |from_ip: &str, forwarded: &str, n: usize| -> String {
        let mut ua = RawUa::new(from_ip, &gw, &format!("xff{n}"));
        let resp = ua.invite(&format!("X-Forwarded-For: {forwarded}\r\n"));
        if status_of(&resp) == "200" {
            ua.ack();
        }
        status_of(&resp).to_string()
    };
    assert_eq!(
        final_status("127.0.0.1", "10.1.1.1", 1),
        "200",
        "the trusted proxy's caller is in the ACL:\n{}",
        gw.log()
    );
    assert_eq!(
        final_status("127.0.0.1", "10.9.9.9", 2),
        "403",
        "the trusted proxy's caller is outside the ACL"
    );
    assert_eq!(
        final_status("127.0.0.2", "10.1.1.1", 3),
        "403",
        "an untrusted sender cannot name its own address:\n{}",
        gw.log()
    );
    // The accepted call records the caller's address, not the proxy's (its
    // events reach the disk on the recorder's flush: wait for them).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let dirs = loop {
        let dirs = gw.call_dirs();
        if !dirs.is_empty() || std::time::Instant::now() > deadline {
            break dirs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let invite = loop {
        if let Some(e) = events(&dirs[0])
            .into_iter()
            .find(|e| e["kind"] == "call.invite")
        {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no call.invite event:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(invite["source"], "10.1.1.1", "{invite}");
}

#[test]
fn the_advertised_address_is_the_contact_peers_are_given() {
    // Behind NAT: peers must send in-dialog requests to the public address.
    let gw = Gateway::start(|g, _| {
        no_speech(g);
        *g = g.replace(
            "# advertised_address = \"203.0.113.10\"\n# advertised_port = 5060",
            "advertised_address = \"203.0.113.10\"\nadvertised_port = 5999",
        );
    });
    let target = format!("127.0.0.1:{}", gw.sip_port);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let me = sock.local_addr().expect("addr");
    let invite = bare_invite(&target, &me, "adv1", "");
    sock.send_to(invite.as_bytes(), &target).expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    let mut ok = String::new();
    while std::time::Instant::now() < deadline && ok.is_empty() {
        if let Ok((len, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            if text.starts_with("SIP/2.0 200") {
                ok = text;
            }
        }
    }
    let contact = ok
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("contact:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        contact.contains("203.0.113.10:5999"),
        "200 OK Contact: {contact:?}\n{ok}\n{}",
        gw.log()
    );
}

/// A bare INVITE from `me` to `target` with a PCMU offer; `tag` makes its
/// branch, tags and Call-ID unique, `extra` adds header lines (each ending
/// in CRLF).
fn bare_invite(target: &str, me: &std::net::SocketAddr, tag: &str, extra: &str) -> String {
    bare_invite_rtp(target, me, tag, extra, 40000)
}

/// [`bare_invite`] whose offer names `rtp_port`.
fn bare_invite_rtp(
    target: &str,
    me: &std::net::SocketAddr,
    tag: &str,
    extra: &str,
    rtp_port: u16,
) -> String {
    let sdp = PCMU_SDP.replace("[auto_media_port]", &rtp_port.to_string()) + "\r\n";
    format!(
        "INVITE sip:bot@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK{tag}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@{me}>;tag={tag}\r\n\
         To: <sip:bot@{target}>\r\n\
         Call-ID: {tag}@{}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@{me}>\r\n\
         {extra}Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        me.ip(),
        sdp.len()
    )
}

/// A hand-written SIP UA on a UDP socket, for what SIPp scenarios make
/// awkward: half-open calls, session timers, in-dialog requests from either
/// side. Requests that arrive while it waits for a response are kept.
struct RawUa {
    sock: std::net::UdpSocket,
    me: std::net::SocketAddr,
    target: String,
    tag: String,
    cseq: u32,
    to_tag: Option<String>,
    requests: std::collections::VecDeque<String>,
}

fn header_of<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status_of(msg: &str) -> &str {
    msg.split_whitespace().nth(1).unwrap_or("")
}

impl RawUa {
    fn new(bind_ip: &str, gw: &Gateway, tag: &str) -> Self {
        let sock = std::net::UdpSocket::bind((bind_ip, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let me = sock.local_addr().expect("addr");
        Self {
            sock,
            me,
            target: format!("127.0.0.1:{}", gw.sip_port),
            tag: tag.to_string(),
            cseq: 1,
            to_tag: None,
            requests: Default::default(),
        }
    }

    fn recv(&self) -> Option<String> {
        let mut buf = [0u8; 8192];
        let (len, _) = self.sock.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..len]).to_string())
    }

    /// The final response to the request with CSeq `cseq`, within `wait`.
    fn final_response(&mut self, cseq: u32, wait: Duration) -> String {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            let Some(msg) = self.recv() else { continue };
            if !msg.starts_with("SIP/2.0") {
                self.requests.push_back(msg);
                continue;
            }
            let ours = header_of(&msg, "CSeq")
                .and_then(|c| c.split_whitespace().next())
                .is_some_and(|n| n == cseq.to_string());
            if ours && !status_of(&msg).starts_with('1') {
                if status_of(&msg).starts_with('2') && self.to_tag.is_none() {
                    self.to_tag = header_of(&msg, "To")
                        .and_then(|t| t.split(";tag=").nth(1))
                        .map(|t| t.split(';').next().unwrap_or(t).to_string());
                }
                return msg;
            }
        }
        "none".into()
    }

    /// INVITE with a PCMU offer and `extra` header lines; its final response.
    fn invite(&mut self, extra: &str) -> String {
        self.invite_rtp(extra, 40000)
    }

    /// [`RawUa::invite`] with the offer naming `rtp_port`.
    fn invite_rtp(&mut self, extra: &str, rtp_port: u16) -> String {
        let invite = bare_invite_rtp(&self.target, &self.me, &self.tag, extra, rtp_port);
        self.sock
            .send_to(invite.as_bytes(), &self.target)
            .expect("send");
        self.final_response(1, Duration::from_secs(10))
    }

    fn to(&self) -> String {
        let tag = self.to_tag.as_deref().unwrap_or("");
        format!("<sip:bot@{}>;tag={tag}", self.target)
    }

    fn ack(&self) {
        let msg = format!(
            "ACK sip:bot@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKack{tag}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={tag}\r\nTo: {to}\r\n\
             Call-ID: {tag}@{ip}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            t = self.target,
            me = self.me,
            tag = self.tag,
            to = self.to(),
            ip = self.me.ip(),
        );
        self.sock
            .send_to(msg.as_bytes(), &self.target)
            .expect("ack");
    }

    /// An in-dialog request without a body; its final response.
    fn request(&mut self, method: &str, extra: &str) -> String {
        self.cseq += 1;
        let msg = format!(
            "{method} sip:bot@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{method}{n}{tag}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={tag}\r\nTo: {to}\r\n\
             Call-ID: {tag}@{ip}\r\nCSeq: {n} {method}\r\nContact: <sip:caller@{me}>\r\n\
             {extra}Content-Length: 0\r\n\r\n",
            t = self.target,
            me = self.me,
            tag = self.tag,
            to = self.to(),
            ip = self.me.ip(),
            n = self.cseq,
        );
        self.sock
            .send_to(msg.as_bytes(), &self.target)
            .expect("send");
        self.final_response(self.cseq, Duration::from_secs(10))
    }

    /// The next request the gateway sends us within `wait` (answered 200
    /// with `extra` header lines).
    fn next_request(&mut self, wait: Duration, extra: &str) -> Option<String> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let msg = match self.requests.pop_front() {
                Some(m) => m,
                None if std::time::Instant::now() >= deadline => return None,
                None => match self.recv() {
                    Some(m) if !m.starts_with("SIP/2.0") => m,
                    _ => continue,
                },
            };
            let mut reply = String::from("SIP/2.0 200 OK\r\n");
            for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
                for line in msg.lines() {
                    if line
                        .split_once(':')
                        .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                    {
                        reply.push_str(line);
                        reply.push_str("\r\n");
                    }
                }
            }
            reply.push_str(extra);
            reply.push_str("Content-Length: 0\r\n\r\n");
            self.sock
                .send_to(reply.as_bytes(), &self.target)
                .expect("reply");
            return Some(msg);
        }
    }
}

fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let (_, body) = gw.get("/metrics", None);
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_metric(gw: &Gateway, name: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(gw, name) != Some(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never reached {want}: {:?}\n{}",
            metric(gw, name),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nothing_is_recorded_before_the_ack_and_calls_in_set_up_are_capped() {
    let gw = Gateway::start(|g, _| {
        no_speech(g);
        *g = g.replace("max_setup_calls = 200", "max_setup_calls = 2");
    });
    // Two callers answered but not ACKed: half-open, nothing on disk.
    let mut first = RawUa::new("127.0.0.1", &gw, "half1");
    let ok = first.invite("Supported: timer\r\nSession-Expires: 120;refresher=uac\r\n");
    assert_eq!(status_of(&ok), "200", "{ok}\n{}", gw.log());
    assert_eq!(
        header_of(&ok, "Session-Expires"),
        Some("120;refresher=uac"),
        "the session timer the caller asked for:\n{ok}"
    );
    assert_eq!(header_of(&ok, "Require"), Some("timer"), "{ok}");
    let mut second = RawUa::new("127.0.0.1", &gw, "half2");
    assert_eq!(status_of(&second.invite("")), "200");
    wait_metric(&gw, "voicegate_calls_setting_up", 2.0);
    // A third is refused while two are in set-up: busy, retry shortly.
    let mut third = RawUa::new("127.0.0.1", &gw, "half3");
    let busy = third.invite("");
    assert_eq!(status_of(&busy), "503", "{busy}");
    assert!(header_of(&busy, "Retry-After").is_some(), "{busy}");
    let (_, m) = gw.get("/metrics", None);
    assert!(
        m.contains("voicegate_sip_rejections_total{cause=\"setup_limit\"} 1"),
        "{m}"
    );
    assert!(
        gw.call_dirs().is_empty(),
        "no recording before the ACK: {:?}",
        gw.call_dirs()
    );
    // A session timer below our minimum: 422 with ours.
    let mut short = RawUa::new("127.0.0.1", &gw, "short1");
    first.ack();
    wait_metric(&gw, "voicegate_calls_setting_up", 1.0);
    let small = short.invite("Supported: timer\r\nSession-Expires: 30\r\n");
    assert_eq!(status_of(&small), "422", "{small}");
    assert_eq!(header_of(&small, "Min-SE"), Some("90"), "{small}");
    // The ACKed call is recorded; a refresh (UPDATE, no offer) is answered
    // with the timer and no SDP.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.call_dirs().len() != 1 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let refreshed = first.request(
        "UPDATE",
        "Supported: timer\r\nSession-Expires: 120;refresher=uac\r\n",
    );
    assert_eq!(status_of(&refreshed), "200", "{refreshed}\n{}", gw.log());
    assert_eq!(
        header_of(&refreshed, "Session-Expires"),
        Some("120;refresher=uac")
    );
    assert_eq!(header_of(&refreshed, "Content-Length"), Some("0"));
    assert_eq!(status_of(&first.request("BYE", "")), "200");
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(10));
    assert_eq!(dirs.len(), 1, "only the confirmed call: {dirs:?}");
    let all = events(&dirs[0]);
    assert_eq!(all[0]["kind"], "call.invite", "{all:?}");
    assert_eq!(all[0]["session_expires_s"], 120);
}

#[test]
fn calls_whose_session_refreshes_stop_are_ended() {
    // RFC 4028 with the 90 s minimum: one caller refreshes nothing (it should,
    // refresher=uac) and is ended ~60 s in; for another we are the refresher
    // and send UPDATE at half the interval, and its call goes on.
    let gw = Gateway::start(|g, _| {
        no_speech(g);
        *g = g.replace("rtp_timeout_s = 30", "rtp_timeout_s = 600");
    });
    let silent = {
        let mut ua = RawUa::new("127.0.0.1", &gw, "stale1");
        let ok = ua.invite("Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n");
        assert_eq!(status_of(&ok), "200", "{ok}");
        ua.ack();
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            let bye = ua.next_request(Duration::from_secs(100), "");
            (t0.elapsed(), bye)
        })
    };
    let mut ua = RawUa::new("127.0.0.1", &gw, "fresh1");
    let ok = ua.invite(
        "Supported: timer\r\nSession-Expires: 90;refresher=uas\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n",
    );
    assert_eq!(header_of(&ok, "Session-Expires"), Some("90;refresher=uas"));
    ua.ack();
    let t0 = std::time::Instant::now();
    let refresh = ua
        .next_request(
            Duration::from_secs(80),
            "Session-Expires: 90;refresher=uas\r\nRequire: timer\r\n",
        )
        .expect("the gateway refreshes the session");
    let at = t0.elapsed();
    assert!(refresh.starts_with("UPDATE "), "{refresh}");
    assert!(
        at >= Duration::from_secs(40) && at <= Duration::from_secs(60),
        "at half the interval: {at:?}"
    );
    let (after, bye) = silent.join().expect("thread");
    let bye = bye.expect("the stale call is ended");
    assert!(bye.starts_with("BYE "), "{bye}");
    assert!(
        after >= Duration::from_secs(55) && after <= Duration::from_secs(80),
        "90 s less a third: {after:?}"
    );
    // The refreshed call is still up past the point the stale one ended.
    assert!(
        ua.next_request(Duration::from_secs(3), "").is_none(),
        "no BYE for the refreshed call"
    );
    assert_eq!(status_of(&ua.request("BYE", "")), "200");
    let dirs = gw.wait_calls_ended(2, Duration::from_secs(20));
    let reasons: Vec<String> = dirs
        .iter()
        .flat_map(|d| events(d))
        .filter(|e| e["kind"] == "call.hangup")
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.contains(&"session_expired".to_string()),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"caller_bye".to_string()), "{reasons:?}");
}

/// The final status of an OPTIONS probe (a dispatcher's health check).
fn options_status(gw: &Gateway) -> (String, String) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let me = sock.local_addr().expect("addr");
    let target = format!("127.0.0.1:{}", gw.sip_port);
    let tag: u32 = rand_tag();
    let msg = format!(
        "OPTIONS sip:bot@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKopt{tag}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag={tag}\r\nTo: <sip:bot@{target}>\r\n\
         Call-ID: opt{tag}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(msg.as_bytes(), &target).expect("send");
    let mut buf = [0u8; 4096];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            (status_of(&text).to_string(), text)
        }
        Err(_) => ("none".into(), String::new()),
    }
}

fn rand_tag() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

#[test]
fn a_node_whose_recognisers_fall_behind_leaves_rotation_and_comes_back() {
    // One single-threaded worker on the slower multilingual model, a short
    // queue and frequent partials: twelve talking callers put it behind.
    let gw = Gateway::start(|g, _| {
        *g = g
            .replace(
                "model = \"models/ggml-tiny.en.bin\"",
                "model = \"models/ggml-base.bin\"",
            )
            .replace("workers = 0", "workers = 1")
            .replace("threads_per_worker = 2", "threads_per_worker = 1")
            .replace("queue = 8", "queue = 4")
            .replace("partial_interval_ms = 1000", "partial_interval_ms = 300");
    });
    assert_eq!(options_status(&gw).0, "200", "idle: in rotation");
    let wav = root().join("tests/calls/unrecognized.wav");
    let mut callers = place_calls(
        &gw,
        &wav,
        &["--calls", "12", "--rate", "12", "--linger", "0.5"],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut refused = None;
    while std::time::Instant::now() < deadline && refused.is_none() {
        let (status, text) = options_status(&gw);
        if status == "503" {
            refused = Some(text);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = refused.unwrap_or_else(|| {
        panic!(
            "OPTIONS never answered 503 while the recogniser was behind:\n{}",
            gw.log()
        )
    });
    assert!(header_of(&refused, "Retry-After").is_some(), "{refused}");
    let _ = callers.0.wait();
    // Caught up: back in rotation.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while options_status(&gw).0 != "200" {
        assert!(
            std::time::Instant::now() < deadline,
            "still out of rotation after the callers left:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Kills the child however the test ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `voicegate call` playing `wav` to the gateway's bot (not listening back),
/// with `args` (`--calls`, `--rate`, …); stopped when dropped.
fn place_calls(gw: &Gateway, wav: &std::path::Path, args: &[&str]) -> ChildGuard {
    let callers = std::process::Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .current_dir(root())
        .arg("call")
        .arg(format!("sip:bot@127.0.0.1:{}", gw.sip_port))
        .arg("--play")
        .arg(wav)
        .args(args)
        .arg("--no-listen")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("voicegate call");
    scopeguard(callers)
}

fn scopeguard(child: std::process::Child) -> ChildGuard {
    ChildGuard(child)
}

/// RTP packets one caller's socket received in `window`, and the longest
/// gap between two of them.
fn rtp_received(sock: &std::net::UdpSocket, window: Duration) -> (usize, Duration) {
    let mut buf = [0u8; 2048];
    // What queued up before the window is not counted.
    sock.set_nonblocking(true).ok();
    while sock.recv_from(&mut buf).is_ok() {}
    sock.set_nonblocking(false).ok();
    sock.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let start = std::time::Instant::now();
    let mut last: Option<std::time::Instant> = None;
    let (mut n, mut gap) = (0, Duration::ZERO);
    while start.elapsed() < window {
        if sock.recv_from(&mut buf).is_ok() {
            let now = std::time::Instant::now();
            if let Some(l) = last {
                gap = gap.max(now - l);
            }
            last = Some(now);
            n += 1;
        }
    }
    (n, gap)
}

/// CPU time (clock ticks, user + system) used so far by each thread name
/// of process `pid`, with how many threads bear it.
fn cpu_by_thread(pid: u32) -> std::collections::HashMap<String, (usize, u64)> {
    let mut by_name = std::collections::HashMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc task list");
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // `tid (comm) state ppid …`: comm may hold spaces; fields 14 and 15
        // (utime, stime) count from the state after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
            .sum();
        let e = by_name.entry(name).or_insert((0, 0));
        e.0 += 1;
        e.1 += ticks;
    }
    by_name
}

#[test]
fn answered_calls_run_on_the_media_threads_not_beside_sip() {
    // Speech off: what runs is the calls' media clock, RTP and decisions.
    let gw = Gateway::start(|g, _| no_speech(g));
    let pid = gw.pid().expect("running");
    let wav = root().join("tests/calls/angry_words.wav"); // 19.6 s
    let _callers = place_calls(&gw, &wav, &["--calls", "40", "--rate", "40"]);
    // Wait for the calls to be up (all 40, or at least 20 if a loaded box
    // made admission refuse some) and no more to come.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut up = 0.0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now_up = metric(&gw, "voicegate_active_calls").unwrap_or(0.0);
        if now_up >= 40.0 || (now_up >= 20.0 && now_up == up) {
            up = now_up;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now_up} calls up\n{}",
            gw.log()
        );
        up = now_up;
    }
    // The calls are up and no SIP is being exchanged: for 4 s, whatever
    // runs the calls burns CPU, and SIP's runtime has nothing to do.
    let before = cpu_by_thread(pid);
    std::thread::sleep(Duration::from_secs(4));
    let after = cpu_by_thread(pid);
    assert_eq!(
        metric(&gw, "voicegate_active_calls"),
        Some(up),
        "the calls stayed up through the window"
    );
    let used = |name: &str| -> (usize, u64) {
        let (threads, ticks) = after.get(name).copied().unwrap_or((0, 0));
        let was = before.get(name).map_or(0, |b| b.1);
        (threads, ticks.saturating_sub(was))
    };
    let (media_threads, media) = used("voicegate-media");
    // The main runtime's workers: tokio's default thread name.
    let (_, sip) = used("tokio-rt-worker");
    eprintln!("CPU ticks in 4 s with {up} calls: media runtime {media} on {media_threads} threads, SIP runtime {sip}; all threads: {after:?}");
    assert!(media_threads >= 2, "the media runtime's workers: {after:?}");
    assert!(
        media >= 4,
        "{up} calls for 4 s used only {media} ticks on the media threads: {after:?}"
    );
    assert!(
        sip * 2 < media,
        "the calls' work ran beside SIP: media {media} ticks, SIP runtime {sip}"
    );
}

#[test]
fn five_established_calls_keep_their_media_through_an_invite_flood() {
    // Speech off: what is measured is the media path against SIP work.
    let gw = Gateway::start(|g, _| {
        no_speech(g);
        *g = g.replace("rtp_timeout_s = 30", "rtp_timeout_s = 600");
    });
    let mut calls = Vec::new();
    for i in 0..5 {
        let rtp = std::net::UdpSocket::bind("127.0.0.1:0").expect("rtp socket");
        let port = rtp.local_addr().expect("addr").port();
        let mut ua = RawUa::new("127.0.0.1", &gw, &format!("steady{i}"));
        let ok = ua.invite_rtp("", port);
        assert_eq!(status_of(&ok), "200", "{ok}");
        ua.ack();
        calls.push((ua, rtp));
    }
    // Let the greetings start, then measure 10 s without and 10 s with a flood.
    std::thread::sleep(Duration::from_secs(2));
    let window = Duration::from_secs(9);
    let measure = |calls: &Vec<(RawUa, std::net::UdpSocket)>| -> Vec<(usize, Duration)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = calls
                .iter()
                .map(|(_, rtp)| s.spawn(move || rtp_received(rtp, window)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("receiver"))
                .collect()
        })
    };
    let baseline = measure(&calls);
    let rss_before = gw.rss_kib().expect("rss");
    let target = format!("127.0.0.1:{}", gw.sip_port);
    // SIPp from 127.0.0.2: 2,000 never-ACKed INVITEs a second for 10 s
    // (each a new Call-ID, never retransmitted, as a scanner sends them).
    // The measuring window sits inside the flood.
    let flood_round = |_round: u32| -> (Vec<(usize, Duration)>, u32) {
        let dir = sipp_dir();
        std::fs::copy(
            root().join("tests/sipp/flood.xml"),
            dir.path().join("flood.xml"),
        )
        .expect("copy the scenario");
        let started = std::time::Instant::now();
        let mut sipp = std::process::Command::new("sipp")
            .current_dir(dir.path())
            .arg(&target)
            .args(["-sf", "flood.xml", "-r", "2000", "-m", "20000", "-nr"])
            .args([
                "-i",
                "127.0.0.2",
                "-mi",
                "127.0.0.2",
                "-nostdin",
                "-s",
                "bot",
            ])
            .args([
                "-p",
                &free_port().to_string(),
                "-mp",
                &rtp_base(4).to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run sipp (make test installs sip-tester)");
        std::thread::sleep(Duration::from_millis(500));
        let flooded = measure(&calls);
        let status = sipp.wait().expect("sipp ran");
        let took = started.elapsed();
        assert!(status.success(), "SIPp's flood failed: {status}");
        assert!(
            took >= Duration::from_secs(9),
            "the flood lasted {took:?}: SIPp did not keep its rate"
        );
        (flooded, 20_000)
    };
    // Once a flood's half-open calls have timed out (64·T1 without an ACK)
    // and the gateway's periodic trim ran: its resident memory.
    let settled_rss = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while metric(&gw, "voicegate_calls_setting_up") != Some(0.0) {
            assert!(std::time::Instant::now() < deadline, "{}", gw.log());
            std::thread::sleep(Duration::from_millis(500));
        }
        std::thread::sleep(Duration::from_secs(11));
        gw.rss_kib().expect("rss")
    };
    let (flooded, sent) = flood_round(1);
    assert!(sent >= 10_000, "the flood ran: {sent} INVITEs");
    for (i, ((base_n, base_gap), (n, gap))) in baseline.iter().zip(&flooded).enumerate() {
        assert!(
            *n as f64 >= 0.99 * *base_n as f64,
            "call {i}: {n} packets during the flood vs {base_n} before"
        );
        assert!(
            *gap <= Duration::from_millis(100),
            "call {i}: a {gap:?} gap during the flood (before: {base_gap:?})"
        );
    }
    // Nothing recorded for the flood. Memory: the first flood leaves a
    // working set behind (allocator and table high-water marks); a second
    // one must not add to it — nothing per flooded INVITE is kept.
    let rss_first = settled_rss();
    let (_, sent_again) = flood_round(2);
    let rss_after = settled_rss();
    assert_eq!(gw.call_dirs().len(), 5, "{:?}", gw.call_dirs());
    eprintln!(
        "RSS before {rss_before} KiB, after one flood {rss_first} KiB, after two {rss_after} KiB ({sent_again} more INVITEs)"
    );
    assert!(
        (rss_after as f64) <= 1.10 * rss_first as f64,
        "RSS {rss_before} KiB before the floods, {rss_first} KiB after one, {rss_after} KiB after two"
    );
    let (_, m) = gw.get("/metrics", None);
    eprintln!(
        "flood: {sent} INVITEs; packets per call before {:?}, during {:?}; {}",
        baseline,
        flooded,
        m.lines()
            .filter(|l| l.contains("cause=\"rate\""))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // The flood's half-open calls are counted apart: none of them is a
    // finished call in the outcome shares, and the board still lists the
    // five real calls first.
    assert!(
        !m.contains("voicegate_calls_total{"),
        "flooded INVITEs counted as finished calls:\n{m}"
    );
    assert!(
        metric(
            &gw,
            "voicegate_calls_never_connected_total{reason=\"no_ack\"}"
        )
        .is_some_and(|n| n >= 50.0),
        "{m}"
    );
    let (_, list) = gw.get("/api/calls", Some(Gateway::TOKEN));
    let list: serde_json::Value = serde_json::from_str(&list).expect("calls JSON");
    let live = list["calls"]
        .as_array()
        .expect("a list")
        .iter()
        .take_while(|c| c["state"] != "ended")
        .count();
    assert_eq!(live, 5, "{list}");
    for (mut ua, _) in calls {
        assert_eq!(status_of(&ua.request("BYE", "")), "200");
    }
}

#[test]
fn the_server_header_names_no_release_unless_the_administrator_says_so() {
    // Default: the product's name only, so a prober cannot tell which
    // release (and which bugs) it talks to.
    let gw = Gateway::start(|g, _| no_speech(g));
    let (status, text) = options_status(&gw);
    assert_eq!(status, "200", "{text}");
    let agent = header_of(&text, "Server")
        .or_else(|| header_of(&text, "User-Agent"))
        .unwrap_or_else(|| panic!("no Server or User-Agent header: {text}"));
    assert_eq!(agent, "voicegate", "{text}");
    assert!(!text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    drop(gw);
    // `[sip] user_agent` is what every response carries.
    let gw = Gateway::start(|g, _| {
        no_speech(g);
        assert!(g.contains("# user_agent = \"voicegate\""));
        *g = g.replace(
            "# user_agent = \"voicegate\"",
            "user_agent = \"acme-ivr 2\"",
        );
    });
    let (status, text) = options_status(&gw);
    assert_eq!(status, "200", "{text}");
    let agent = header_of(&text, "Server").or_else(|| header_of(&text, "User-Agent"));
    assert_eq!(agent, Some("acme-ivr 2"), "{text}");
}

#[test]
fn a_bye_nobody_answers_does_not_hold_shutdown_past_the_grace() {
    // The test configuration has `grace_s = 2`.
    let mut gw = Gateway::start(|g, _| no_speech(g));
    let mut sip = RawInviter::new(&gw);
    // Held (no RTP expected), so only the shutdown ends the call.
    sip.direction = Some("a=inactive");
    let (status, ok) = sip.invite("gone-1@127.0.0.1", None);
    assert_eq!(status, 200, "{ok}");
    sip.ack("gone-1@127.0.0.1", &ok);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while gw.call_dirs().is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The caller has vanished: its socket stays open and answers nothing,
    // so the gateway's BYE is never answered (RFC 3261 timer F: 32 s).
    let term_at = std::time::Instant::now();
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(40)).expect("exited");
    let took = term_at.elapsed();
    assert!(status.success(), "{status}:\n{}", gw.log());
    assert!(took >= Duration::from_secs(2), "before the grace: {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "the unanswered BYE held the shutdown: {took:?}"
    );
    let dirs = gw.call_dirs();
    assert_eq!(dirs.len(), 1);
    let all = events(&dirs[0]);
    let hangup = event_of(&all, "call.hangup");
    assert_eq!(hangup["reason"], "gateway_shutdown", "{hangup}");
    assert!(all.iter().any(|e| e["kind"] == "call.ended"));
    assert!(gw.log().contains("no answer to our BYE"), "{}", gw.log());
    drop(sip);
}
