//! Recording: every call gets a stereo WAV (left: caller; right: what the
//! gateway, later the agent, sent) and an `events.jsonl`, under
//! `recordings/YYYY-MM-DD/<call-id>/`. Flushed periodically so a crash loses
//! at most one flush interval; [`repair`] fixes headers after a crash.

mod repair;

pub use repair::{repair_all, repair_wav, RepairOutcome};

use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the stereo recording inside a call's directory.
pub const WAV_NAME: &str = "call.wav";
/// Name of the event log inside a call's directory.
pub const EVENTS_NAME: &str = "events.jsonl";
/// Present while a call is being recorded; removed when finalised.
pub const IN_PROGRESS_MARKER: &str = ".recording";

/// A call-id made safe as a directory name.
pub fn safe_dir_name(call_id: &str) -> String {
    let s: String = call_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("call{s}")
    } else {
        s
    }
}

/// Writes one call's recording and event log.
pub struct CallRecorder {
    dir: PathBuf,
    wav: Option<hound::WavWriter<BufWriter<File>>>,
    events: BufWriter<File>,
    interleaved: Vec<i16>,
    frames: u64,
}

impl std::fmt::Debug for CallRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallRecorder")
            .field("dir", &self.dir)
            .finish()
    }
}

impl CallRecorder {
    /// Start recording `call_id` under `root/YYYY-MM-DD/`. A call-id already
    /// recorded today gets a numeric suffix rather than overwriting anything.
    pub fn create(root: &Path, date: &str, call_id: &str, rate: u32) -> std::io::Result<Self> {
        let base = root.join(date).join(safe_dir_name(call_id));
        let mut dir = base.clone();
        let mut n = 1;
        while dir.exists() {
            n += 1;
            dir = PathBuf::from(format!("{}-{n}", base.display()));
        }
        std::fs::create_dir_all(&dir)?;
        File::create(dir.join(IN_PROGRESS_MARKER))?;
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wav = hound::WavWriter::new(BufWriter::new(File::create(dir.join(WAV_NAME))?), spec)
            .map_err(std::io::Error::other)?;
        let events = BufWriter::new(File::create(dir.join(EVENTS_NAME))?);
        Ok(Self {
            dir,
            wav: Some(wav),
            events,
            interleaved: Vec::with_capacity(640),
            frames: 0,
        })
    }

    /// The call's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Audio recorded so far.
    pub fn duration(&self, rate: u32) -> Duration {
        Duration::from_millis(self.frames * 1000 / u64::from(rate.max(1)))
    }

    /// Append one stretch of audio; `left` and `right` are padded to the same length.
    pub fn write(&mut self, left: &[i16], right: &[i16]) -> std::io::Result<()> {
        let Some(wav) = self.wav.as_mut() else {
            return Ok(());
        };
        let n = left.len().max(right.len());
        self.interleaved.clear();
        for i in 0..n {
            self.interleaved.push(left.get(i).copied().unwrap_or(0));
            self.interleaved.push(right.get(i).copied().unwrap_or(0));
        }
        let mut w = wav.get_i16_writer(self.interleaved.len() as u32);
        for s in &self.interleaved {
            w.write_sample(*s);
        }
        w.flush().map_err(std::io::Error::other)?;
        self.frames += n as u64;
        Ok(())
    }

    /// Log one event: `t_s` (seconds since answer), wall-clock `ts`, `kind`, and fields.
    pub fn event(&mut self, t: Duration, kind: &str, fields: Value) -> std::io::Result<()> {
        let mut obj = Map::new();
        obj.insert(
            "t_s".into(),
            Value::from((t.as_secs_f64() * 1000.0).round() / 1000.0),
        );
        obj.insert(
            "ts".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        if let Value::Object(extra) = fields {
            obj.extend(extra);
        }
        // The event's own kind always wins over a field of the same name.
        obj.insert("kind".into(), Value::from(kind));
        serde_json::to_writer(&mut self.events, &Value::Object(obj))?;
        self.events.write_all(b"\n")
    }

    /// Push buffered audio (with a valid header) and events to disk.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(wav) = self.wav.as_mut() {
            wav.flush().map_err(std::io::Error::other)?;
        }
        self.events.flush()
    }

    /// Close the WAV with its final header and remove the in-progress marker.
    pub fn finalize(mut self) -> std::io::Result<PathBuf> {
        if let Some(wav) = self.wav.take() {
            wav.finalize().map_err(std::io::Error::other)?;
        }
        self.events.flush()?;
        std::fs::remove_file(self.dir.join(IN_PROGRESS_MARKER)).ok();
        Ok(self.dir.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stereo_and_events() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rec = CallRecorder::create(tmp.path(), "2026-11-24", "abc/../x@h", 8000).unwrap();
        rec.write(&[1; 160], &[2; 160]).unwrap();
        rec.event(
            Duration::from_millis(1500),
            "dtmf",
            serde_json::json!({"digit": "#"}),
        )
        .unwrap();
        let dir = rec.finalize().unwrap();
        assert!(dir.starts_with(tmp.path().join("2026-11-24")));
        assert!(!dir.join(IN_PROGRESS_MARKER).exists());
        let r = hound::WavReader::open(dir.join(WAV_NAME)).unwrap();
        assert_eq!(r.spec().channels, 2);
        let s: Vec<i16> = r.into_samples().map(|s| s.unwrap()).collect();
        assert_eq!(s.len(), 320);
        assert_eq!((s[0], s[1]), (1, 2));
        let ev = std::fs::read_to_string(dir.join(EVENTS_NAME)).unwrap();
        let v: Value = serde_json::from_str(ev.lines().next().unwrap()).unwrap();
        assert_eq!(v["kind"], "dtmf");
        assert_eq!(v["digit"], "#");
        assert_eq!(v["t_s"], 1.5);
    }

    #[test]
    fn same_call_id_twice_does_not_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let a = CallRecorder::create(tmp.path(), "d", "same", 8000).unwrap();
        let b = CallRecorder::create(tmp.path(), "d", "same", 8000).unwrap();
        assert_ne!(a.dir(), b.dir());
    }
}
