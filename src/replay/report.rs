//! `voicegate replay --report DIR`: one HTML page per call and an index,
//! plain files that open from disk without a server — the recording in an
//! audio player, the transcript with times and intents, a plot (inline SVG)
//! of speech rate, loudness and frustration over time with the hand-over
//! marked, and the summary with its reasons.

use super::ReplayReport;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// One replayed call for the report.
pub struct ReportCall<'a> {
    /// The WAV replayed.
    pub file: &'a Path,
    /// Its replay, or why there is none.
    pub result: Result<&'a ReplayReport, &'a str>,
    /// Audio seconds.
    pub audio_s: f64,
    /// Expectation misses, when checked.
    pub misses: Option<&'a [String]>,
}

/// HTML-escape `s`.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.transferred{color:#b00}.bot_resolved{color:#070}.fail{color:#b00;font-weight:bold}\
.pass{color:#070}.summary{background:#fff8e0;border-left:4px solid #e0a000;padding:.6em 1em}\
svg text{font-size:11px;font-family:sans-serif}";

/// Write the report for `calls` under `dir`; the index page's path.
pub fn write(dir: &Path, calls: &[ReportCall<'_>]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("calls"))?;
    std::fs::create_dir_all(dir.join("audio"))?;
    let mut rows = String::new();
    for (n, call) in calls.iter().enumerate() {
        let stem = call
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "call".into());
        let page = format!("{:04}-{}.html", n + 1, sanitize(&stem));
        let check = match call.misses {
            None => String::new(),
            Some([]) => "<span class=pass>pass</span>".into(),
            Some(m) => format!("<span class=fail>FAIL</span> {}", esc(&m.join("; "))),
        };
        match call.result {
            Ok(report) => {
                let audio = format!("{:04}-{}.wav", n + 1, sanitize(&stem));
                std::fs::copy(call.file, dir.join("audio").join(&audio))?;
                std::fs::write(
                    dir.join("calls").join(&page),
                    call_page(call.file, report, call.audio_s, &audio, &check),
                )?;
                let _ = write!(
                    rows,
                    "<tr><td><a href=\"calls/{page}\">{}</a></td><td class={o}>{o}</td><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td></tr>",
                    esc(&call.file.display().to_string()),
                    esc(report.reason.as_deref().unwrap_or("")),
                    report.transfer_at_s.map(|t| format!("{t:.1} s")).unwrap_or_default(),
                    call.audio_s,
                    check,
                    o = report.outcome,
                );
            }
            Err(e) => {
                let _ = write!(
                    rows,
                    "<tr><td>{}</td><td class=fail>unreadable</td><td colspan=3>{}</td><td>{}</td></tr>",
                    esc(&call.file.display().to_string()),
                    esc(e),
                    check
                );
            }
        }
    }
    let index = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>voicegate replay report</title><style>{STYLE}</style></head><body>\
         <h1>Replay report</h1><p>{} calls</p><table><tr><th>call</th><th>outcome</th><th>reason</th><th>hand-over at</th><th>length</th><th>expectation</th></tr>{rows}</table></body></html>",
        calls.len()
    );
    let path = dir.join("index.html");
    std::fs::write(&path, index)?;
    Ok(path)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn call_page(file: &Path, r: &ReplayReport, audio_s: f64, audio: &str, check: &str) -> String {
    let mut transcript = String::new();
    for u in &r.utterances {
        let _ = write!(
            transcript,
            "<tr><td>{:.2}–{:.2} s</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.1}</td></tr>",
            u.result.start_s,
            u.result.end_s,
            esc(&u.result.text),
            esc(u.intent.as_deref().unwrap_or("—")),
            u.result.words_per_s,
            u.result.loudness_dbfs
        );
    }
    let mut decisions = String::new();
    for d in &r.decisions {
        let _ = write!(
            decisions,
            "<tr><td>{:.2} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            d.t_s,
            esc(d.kind.as_str()),
            esc(d.reason.as_deref().unwrap_or("")),
            d.score.map(|s| format!("{s:.2}")).unwrap_or_default(),
            esc(&d.evidence.join("; "))
        );
    }
    let summary = match &r.summary {
        Some(s) => {
            let reasons: Vec<String> = s["reasons"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .map(|v| format!("<li>{}</li>", esc(v)))
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "<div class=summary><p><b>Summary for the agent:</b> {}</p><ul>{}</ul></div>",
                esc(s["text"].as_str().unwrap_or("")),
                reasons.join("")
            )
        }
        None => String::new(),
    };
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{title}</title><style>{STYLE}</style></head><body>\
         <p><a href=\"../index.html\">← all calls</a></p><h1>{title}</h1>\
         <p>Caller {caller} · outcome <b class={o}>{o}</b>{reason} · {audio_s:.1} s {check}</p>\
         <audio controls preload=none src=\"../audio/{audio}\"></audio>\
         {summary}<h2>Over time</h2>{plot}\
         <h2>Transcript</h2><table><tr><th>time</th><th>caller said</th><th>intent</th><th>words/s</th><th>dBFS</th></tr>{transcript}</table>\
         <h2>Decisions</h2><table><tr><th>at</th><th>decision</th><th>reason</th><th>score</th><th>evidence</th></tr>{decisions}</table>\
         </body></html>",
        title = esc(&file.display().to_string()),
        caller = esc(r.caller.as_deref().unwrap_or("anonymous")),
        o = r.outcome,
        reason = r
            .reason
            .as_ref()
            .map(|x| format!(" ({}, at {:.1} s)", esc(x), r.transfer_at_s.unwrap_or(0.0)))
            .unwrap_or_default(),
        plot = plot(r, audio_s),
    )
}

/// The SVG plot: speech rate (words/s), loudness (dBFS) per utterance and
/// the frustration score after each, on one time axis; the hand-over as a
/// red line.
pub fn plot(r: &ReplayReport, audio_s: f64) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 260.0, 30.0, 190.0, 15.0, 30.0);
    let span = audio_s.max(1.0);
    let x = |t: f64| left + (t / span).clamp(0.0, 1.0) * (w - left - right);
    let plot_h = h - top - bottom;
    let y = |v: f64| top + (1.0 - v.clamp(0.0, 1.0)) * plot_h;
    let max_rate = r
        .utterances
        .iter()
        .map(|u| u.result.words_per_s)
        .fold(4.0, f64::max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"speech rate, loudness and frustration over time\">\
         <rect x=\"{left}\" y=\"{top}\" width=\"{}\" height=\"{plot_h}\" fill=\"#fafafa\" stroke=\"#ccc\"/>",
        w - left - right
    );
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let _ = write!(
            s,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#eee\"/><text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{t:.0} s</text>",
            x(t),
            top + plot_h,
            h - 10.0
        );
        t += if span > 60.0 { 10.0 } else { 5.0 };
    }
    let series = |points: Vec<(f64, f64)>, color: &str, class: &str| -> String {
        if points.is_empty() {
            return String::new();
        }
        let pts: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let dots: String = points
            .iter()
            .map(|(a, b)| {
                format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                    x(*a),
                    y(*b)
                )
            })
            .collect();
        format!(
            "<polyline class=\"{class}\" points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>{dots}",
            pts.join(" ")
        )
    };
    let mid = |u: &super::ReplayUtterance| (u.result.start_s + u.result.end_s) / 2.0;
    s.push_str(&series(
        r.utterances
            .iter()
            .map(|u| (mid(u), u.result.words_per_s / max_rate))
            .collect(),
        "#1f77b4",
        "rate",
    ));
    s.push_str(&series(
        r.utterances
            .iter()
            .map(|u| (mid(u), (f64::from(u.result.loudness_dbfs) + 60.0) / 60.0))
            .collect(),
        "#2ca02c",
        "loudness",
    ));
    let mut frustration = vec![(0.0, 0.0)];
    frustration.extend(
        r.decisions
            .iter()
            .filter(|d| d.kind == crate::call::core::DecisionKind::Emotion)
            .filter_map(|d| d.score.map(|sc| (d.t_s, sc))),
    );
    s.push_str(&series(frustration, "#d62728", "frustration"));
    if let (Some(at), Some(reason)) = (r.transfer_at_s, &r.reason) {
        let _ = write!(
            s,
            "<line class=\"handover\" x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#b00\" stroke-width=\"2\" stroke-dasharray=\"5,3\"/>\
             <text x=\"{2:.1}\" y=\"{3}\" fill=\"#b00\">hand-over: {4}</text>",
            x(at),
            top + plot_h,
            x(at) + 4.0,
            top + 12.0,
            esc(reason)
        );
    }
    let legend = [
        ("#1f77b4", format!("speech rate (0–{max_rate:.1} w/s)")),
        ("#2ca02c", "loudness (−60–0 dBFS)".to_string()),
        ("#d62728", "frustration (0–1)".to_string()),
    ];
    for (i, (color, label)) in legend.iter().enumerate() {
        let ly = top + 14.0 + 18.0 * i as f64;
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - right + 8.0,
            ly - 9.0,
            w - right + 22.0,
            ly,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}
