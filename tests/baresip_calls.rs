//! End-to-end calls from baresip, a real softphone, playing WAV files.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One call at a time: each test runs a gateway with Whisper, and on a 2-core
/// machine parallel calls starve each other's recognition.
static ONE_CALL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_CALL_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A baresip caller playing `wav`, with a UDP console for sending DTMF.
struct Caller {
    child: Child,
    console: u16,
    _dir: tempfile::TempDir,
}

impl Caller {
    fn dial(gw: &Gateway, wav: &Path, seconds: u32) -> Caller {
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
            "<sip:2001@127.0.0.1>;regint=0\n",
        )
        .expect("accounts");
        let child = Command::new("baresip")
            .arg("-f")
            .arg(dir.path())
            .arg("-e")
            .arg(format!("/dial sip:bot@127.0.0.1:{}", gw.sip_port))
            .arg("-t")
            .arg(seconds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("baresip (make test installs it)");
        Caller {
            child,
            console,
            _dir: dir,
        }
    }

    fn send_digit(&self, digit: char) {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.send_to(
            format!("/sndcode {digit}\n").as_bytes(),
            ("127.0.0.1", self.console),
        )
        .expect("console");
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn baresip_call_is_recorded_and_its_rfc4733_digits_logged_and_hash_ends_it() {
    let _serial = serial();
    let gw = Gateway::start(|_, _| {});
    let wav = root().join("tests/calls/angry_words.wav");
    let caller = Caller::dial(&gw, &wav, 30);
    std::thread::sleep(Duration::from_secs(4));
    caller.send_digit('5');
    std::thread::sleep(Duration::from_secs(7));
    caller.send_digit('#');
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(15));
    drop(caller);
    let all = events(&dirs[0]);
    let digits: Vec<_> = all
        .iter()
        .filter(|e| e["kind"] == "dtmf")
        .map(|e| {
            (
                e["digit"].as_str().unwrap_or("").to_string(),
                e["source"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        digits,
        vec![
            ("5".to_string(), "rfc4733".to_string()),
            ("#".to_string(), "rfc4733".to_string())
        ]
    );
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["by"], "gateway");

    // The caller's words were recognised live and logged.
    let said: Vec<String> = all
        .iter()
        .filter(|e| e["kind"] == "utterance")
        .map(|e| e["text"].as_str().unwrap_or("").to_lowercase())
        .collect();
    assert_eq!(said.len(), 2, "two utterances: {said:?}");
    assert!(said[0].contains("order"), "{said:?}");
    assert!(
        said[1].contains("ridiculous") && said[1].contains("angry"),
        "{said:?}"
    );
    let second = all
        .iter()
        .filter(|e| e["kind"] == "utterance")
        .nth(1)
        .expect("second");
    assert!(second["words_per_s"].as_f64().unwrap_or(0.0) > 2.0);
    assert!(second["latency_ms"].as_u64().is_some());
    assert!(
        all.iter().any(|e| e["kind"] == "transcript.partial"),
        "partial results of long utterances"
    );

    // The live decision core handed the angry caller over, when replay would.
    let handover = all
        .iter()
        .find(|e| e["kind"] == "decision" && e["decision"] == "handover")
        .unwrap_or_else(|| panic!("no hand-over decision: {all:?}"));
    assert_eq!(handover["reason"], "negative_words");
    let at = handover["at_s"].as_f64().unwrap_or(-1.0);
    assert!((9.6..=11.6).contains(&at), "hand-over decided at {at} s");
    let ho = all
        .iter()
        .find(|e| e["kind"] == "handover")
        .expect("handover event");
    let summary = ho["summary"]["text"].as_str().unwrap_or("");
    assert!(
        summary.contains("negative words") && summary.contains("2001"),
        "{summary}"
    );

    // The bot answered the first request out loud (espeak-ng) on the right
    // channel, and stopped when the caller talked over it.
    let (left, right) = stereo(&dirs[0]);
    let said_at = all
        .iter()
        .find(|e| e["kind"] == "bot.say" && e["text"].as_str().unwrap_or("").contains("order"))
        .and_then(|e| e["t_s"].as_f64())
        .expect("bot reply logged");
    // Synthesis takes a moment (longer on a busy machine): start where the
    // bot's audio does.
    let mut from = (said_at * 8000.0) as usize;
    while from + 160 < right.len()
        && right[from..from + 160]
            .iter()
            .all(|s| s.unsigned_abs() < 300)
    {
        from += 160;
    }
    let bot: Vec<f32> = right[from..(from + 8000 * 3).min(right.len())]
        .iter()
        .map(|s| f32::from(*s) / 32768.0)
        .collect();
    let bot16 = voicegate::media::resample::resample(&bot, 8000, 16000).expect("resample");
    let model = voicegate::speech::asr::WhisperModel::load(&root().join("models/ggml-tiny.en.bin"))
        .expect("model");
    let mut rec = voicegate::speech::asr::Recognizer::new(&model, 2, None).expect("state");
    let heard = rec.recognize(&bot16).expect("asr").text.to_lowercase();
    assert!(
        ["order", "shipped", "yesterday", "arrive"]
            .iter()
            .filter(|w| heard.contains(*w))
            .count()
            >= 2,
        "bot said: {heard:?}"
    );
    assert!(
        all.iter().any(|e| e["kind"] == "bot.interrupted"),
        "barge-in"
    );
    let spoken = wav_mono(&wav);
    // The caller's first sentence (1.0 s – 3.6 s in the file).
    let probe = &spoken[8000..8000 * 3];
    let (lag, r) = best_correlation(&left, probe, 8000 * 6);
    assert!(
        r > 0.9,
        "left channel must carry the caller's WAV (r = {r:.3}, lag {lag})"
    );
}

#[test]
fn inband_dtmf_is_detected_when_no_rfc4733_is_sent() {
    let _serial = serial();
    let gw = Gateway::start(|_, _| {});
    // Two seconds of speech, then a '#' tone in the audio itself.
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("speech_then_hash.wav");
    let spoken = wav_mono(&root().join("tests/calls/calm_billing.wav"));
    let mut samples: Vec<i16> = spoken[..8000 * 3].to_vec();
    samples.extend(voicegate::media::dtmf::tone('#', 200));
    samples.extend(vec![0i16; 8000 * 3]);
    write_wav_8k(&wav, &samples);
    let caller = Caller::dial(&gw, &wav, 20);
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(20));
    drop(caller);
    let all = events(&dirs[0]);
    let dtmf: Vec<_> = all.iter().filter(|e| e["kind"] == "dtmf").collect();
    assert_eq!(dtmf.len(), 1, "{all:?}");
    assert_eq!(dtmf[0]["digit"], "#");
    assert_eq!(dtmf[0]["source"], "inband");
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["reason"], "caller_pressed_hash");
}

#[test]
fn a_served_caller_who_stays_silent_hears_goodbye_and_the_bot_hangs_up() {
    let _serial = serial();
    let gw = Gateway::start(|_, _| {});
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("billing_then_silence.wav");
    let mut samples = wav_mono(&root().join("tests/calls/calm_billing.wav"));
    samples.extend(vec![0i16; 8000 * 12]);
    write_wav_8k(&wav, &samples);
    let caller = Caller::dial(&gw, &wav, 40);
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(35));
    drop(caller);
    let all = events(&dirs[0]);
    let intent = all
        .iter()
        .find(|e| e["kind"] == "decision" && e["decision"] == "intent")
        .expect("intent");
    assert_eq!(intent["reason"], "billing");
    let bye = all
        .iter()
        .find(|e| e["kind"] == "bot.goodbye")
        .expect("goodbye");
    assert_eq!(bye["reason"], "caller_silent");
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["by"], "gateway");
    assert_eq!(hangup["reason"], "caller_silent");
    let t = hangup["t_s"].as_f64().unwrap_or(0.0);
    let served = intent["at_s"].as_f64().unwrap_or(0.0);
    // Goodbye comes after 8 s of silence and after the bot has finished
    // speaking (reply, "anything else?", goodbye): allow for a busy machine.
    assert!(
        t >= served + 8.0 && t < served + 25.0,
        "hung up at {t} s, served at {served} s"
    );
    assert!(
        !all.iter().any(|e| e["kind"] == "handover"),
        "a served caller is not handed over"
    );
}
