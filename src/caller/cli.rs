//! `voicegate call`: place calls from WAV files and report what came back.

use std::path::PathBuf;
use std::process::ExitCode;

/// `voicegate call` options.
#[derive(clap::Args)]
pub struct CallArgs {
    /// Where to call, e.g. sip:bot@127.0.0.1:5060.
    uri: String,
    /// The WAV to play, or a directory of WAVs (one call each, caller ID
    /// from the `.toml` beside each when there is one).
    #[arg(long)]
    play: PathBuf,
    /// Write what came back here (a directory when several calls).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Caller ID.
    #[arg(long)]
    caller: Option<String>,
    /// Send RFC 4733 digits at a moment: DIGITS@SECONDS (repeatable).
    #[arg(long)]
    dtmf: Vec<String>,
    /// How many calls of the one file.
    #[arg(long, default_value_t = 1)]
    calls: usize,
    /// New calls per second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Stay on the line this long after the file ends (seconds).
    #[arg(long, default_value_t = 1.0)]
    linger: f64,
    /// One JSON object per call on stdout.
    #[arg(long)]
    json: bool,
    /// Configuration whose model and `connecting` phrase tell hand-overs
    /// apart in what came back.
    #[arg(long, default_value = "sip-config")]
    config: PathBuf,
    /// Do not transcribe what came back (load tests): hand-overs are not counted.
    #[arg(long)]
    no_listen: bool,
}

/// Place the calls `a` asks for; one line (or JSON object) per call.
pub fn place_calls(a: CallArgs) -> ExitCode {
    use crate::caller::{parse_dtmf, CallPlan, Caller};
    use crate::replay::batch::{inputs, Expectation};
    let dtmf: Result<Vec<_>, _> = a.dtmf.iter().map(|d| parse_dtmf(d)).collect();
    let dtmf = match dtmf {
        Ok(d) => d,
        Err(e) => {
            eprintln!("voicegate call: {e}");
            return ExitCode::from(2);
        }
    };
    let files = match inputs(&a.play) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("voicegate call: {}: no WAV files", a.play.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("voicegate call: {e}");
            return ExitCode::from(2);
        }
    };
    let target = a
        .uri
        .strip_prefix("sip:")
        .and_then(|rest| rest.rsplit('@').next())
        .map(|hp| hp.split(';').next().unwrap_or(hp))
        .map(|hp| {
            if hp.contains(':') {
                hp.to_string()
            } else {
                format!("{hp}:5060")
            }
        })
        .and_then(|hp| std::net::ToSocketAddrs::to_socket_addrs(&hp).ok()?.next());
    let Some(target) = target else {
        eprintln!(
            "voicegate call: {:?} is not a sip:user@host[:port] URI",
            a.uri
        );
        return ExitCode::from(2);
    };
    let many = files.len() > 1 || a.calls > 1;
    let mut plans = Vec::new();
    for n in 0..a.calls.max(1) {
        for f in &files {
            let caller = a
                .caller
                .clone()
                .or_else(|| {
                    Expectation::beside(f)
                        .and_then(Result::ok)
                        .and_then(|e| e.caller)
                })
                .unwrap_or_else(|| "voicegate".into());
            let record = a.record.as_ref().map(|r| {
                if many {
                    let stem = f
                        .file_stem()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default();
                    r.join(format!("{stem}-{}.wav", n + 1))
                } else {
                    r.clone()
                }
            });
            plans.push(CallPlan {
                play: f.clone(),
                record,
                caller,
                dtmf: dtmf.clone(),
                linger: std::time::Duration::from_secs_f64(a.linger.max(0.0)),
            });
        }
    }
    if let (true, Some(dir)) = (many, &a.record) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("voicegate call: {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = runtime.block_on(async move {
        let ua = match Caller::start(target).await {
            Ok(c) => std::sync::Arc::new(c),
            Err(e) => {
                eprintln!("voicegate call: {e}");
                return Vec::new();
            }
        };
        let gap = std::time::Duration::from_secs_f64(1.0 / a.rate.max(0.01));
        let mut tasks = Vec::new();
        for (i, plan) in plans.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            let (ua, uri) = (ua.clone(), a.uri.clone());
            tasks.push(tokio::spawn(async move { ua.call(&uri, &plan).await }));
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(o) = t.await {
                out.push(o);
            }
        }
        out
    });
    if outcomes.is_empty() {
        return ExitCode::FAILURE;
    }
    let mut outcomes = outcomes;
    // Hand-overs are invisible in SIP (the gateway stays in the call): listen
    // for the bot's "connecting" phrase in what came back.
    let listen = if a.no_listen {
        Err("--no-listen".to_string())
    } else {
        crate::config::Config::load(&a.config).map_err(|e| e.to_string())
    };
    match listen.and_then(|cfg| {
        let sp = &cfg.gateway.speech;
        let rec = sp.recognizer(2).map_err(|e| e.to_string())?;
        Ok((cfg.policy.flow.connecting.clone(), rec))
    }) {
        Ok((phrase, mut rec)) => {
            for o in outcomes.iter_mut().filter(|o| o.answered) {
                o.handed_over = Some(crate::caller::heard_phrase(&o.received, &phrase, &mut rec));
            }
        }
        Err(e) => eprintln!("voicegate call: hand-overs not counted ({e})"),
    }
    for o in &outcomes {
        if a.json {
            println!("{}", serde_json::to_string(o).unwrap_or_default());
        } else {
            match &o.error {
                None => println!(
                    "{}: answered in {:.0} ms, {:.1} s of audio back, ended by {}{}",
                    o.file,
                    o.setup_ms.unwrap_or(0.0),
                    o.audio_received_s,
                    o.ended_by,
                    if o.handed_over == Some(true) {
                        ", handed over"
                    } else {
                        ""
                    }
                ),
                Some(e) => println!("{}: FAILED: {e}", o.file),
            }
        }
    }
    let answered = outcomes.iter().filter(|o| o.answered).count();
    let mut setup: Vec<f64> = outcomes.iter().filter_map(|o| o.setup_ms).collect();
    setup.sort_by(|x, y| x.total_cmp(y));
    let p95 = setup
        .get(((setup.len() as f64 - 1.0) * 0.95).round() as usize)
        .copied()
        .unwrap_or(0.0);
    let summary = format!(
        "calls {}  answered {answered}  hand-overs {}  setup mean {:.1} ms p95 {p95:.1} ms  audio received {:.1} s",
        outcomes.len(),
        outcomes.iter().filter(|o| o.handed_over == Some(true)).count(),
        setup.iter().sum::<f64>() / setup.len().max(1) as f64,
        outcomes.iter().map(|o| o.audio_received_s).sum::<f64>()
    );
    if a.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if outcomes.iter().any(|o| o.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
