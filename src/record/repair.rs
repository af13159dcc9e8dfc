//! Crash repair: a WAV whose writer died (kill -9) has a header that does not
//! match the data on disk. Rewrite the RIFF and data sizes so the file plays
//! to the last whole frame that reached the disk.

use super::{EVENTS_NAME, IN_PROGRESS_MARKER, WAV_NAME};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What repair did to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairOutcome {
    /// The header already matched.
    Intact,
    /// Header rewritten; the file now holds this many data bytes.
    Repaired {
        /// Data bytes after repair.
        data_bytes: u64,
    },
}

/// Fix the header of one WAV file in place.
pub fn repair_wav(path: &Path) -> std::io::Result<RepairOutcome> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    let mut head = [0u8; 12];
    f.read_exact(&mut head)?;
    if &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a RIFF/WAVE file", path.display()),
        ));
    }
    let mut pos = 12u64;
    let mut block_align = 4u64;
    loop {
        let mut chunk = [0u8; 8];
        f.seek(SeekFrom::Start(pos))?;
        if f.read_exact(&mut chunk).is_err() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: no data chunk", path.display()),
            ));
        }
        let size = u64::from(u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
        if &chunk[0..4] == b"fmt " {
            let mut fmt = [0u8; 16];
            f.read_exact(&mut fmt)?;
            block_align = u64::from(u16::from_le_bytes([fmt[12], fmt[13]])).max(1);
        }
        if &chunk[0..4] == b"data" {
            let data_start = pos + 8;
            let available = len.saturating_sub(data_start);
            let data_bytes = available - available % block_align;
            let riff = data_start + data_bytes - 8;
            if size == data_bytes
                && u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]])) == riff
            {
                return Ok(RepairOutcome::Intact);
            }
            f.set_len(data_start + data_bytes)?;
            f.seek(SeekFrom::Start(4))?;
            f.write_all(&(riff as u32).to_le_bytes())?;
            f.seek(SeekFrom::Start(pos + 4))?;
            f.write_all(&(data_bytes as u32).to_le_bytes())?;
            f.sync_all()?;
            return Ok(RepairOutcome::Repaired { data_bytes });
        }
        pos += 8 + size + (size % 2);
    }
}

/// Repair every unfinished recording under `root` (those still marked in
/// progress). Returns the call directories repaired.
pub fn repair_all(root: &Path) -> Vec<PathBuf> {
    let mut repaired = Vec::new();
    let Ok(days) = std::fs::read_dir(root) else {
        return repaired;
    };
    for day in days.flatten() {
        let Ok(calls) = std::fs::read_dir(day.path()) else {
            continue;
        };
        for call in calls.flatten() {
            let dir = call.path();
            if !dir.join(IN_PROGRESS_MARKER).exists() {
                continue;
            }
            match repair_wav(&dir.join(WAV_NAME)) {
                Ok(outcome) => {
                    tracing::warn!(dir = %dir.display(), ?outcome, "repaired an unfinished recording");
                    let mut line = crate::call::CallEvent::RecordingRepaired {
                        outcome: format!("{outcome:?}"),
                    }
                    .to_json();
                    line.insert(
                        "ts".into(),
                        chrono::Utc::now()
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                            .into(),
                    );
                    let line = serde_json::Value::Object(line);
                    if let Ok(mut ev) = OpenOptions::new().append(true).open(dir.join(EVENTS_NAME))
                    {
                        let _ = writeln!(ev, "{line}");
                    }
                    std::fs::remove_file(dir.join(IN_PROGRESS_MARKER)).ok();
                    repaired.push(dir);
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot repair recording")
                }
            }
        }
    }
    repaired
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_a_header_left_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..1000 {
            w.write_sample(i as i16).unwrap();
        }
        w.finalize().unwrap();
        // A crash after more audio reached the disk but before the header was
        // updated: 1001 more samples plus half a sample.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&vec![7u8; 1001 * 2 + 1]).unwrap();
        drop(f);
        assert_eq!(hound::WavReader::open(&path).unwrap().len(), 1000);
        let out = repair_wav(&path).unwrap();
        assert_eq!(
            out,
            RepairOutcome::Repaired {
                data_bytes: 2000 * 2
            }
        );
        assert_eq!(hound::WavReader::open(&path).unwrap().len(), 2000);
        assert_eq!(repair_wav(&path).unwrap(), RepairOutcome::Intact);
    }
}
