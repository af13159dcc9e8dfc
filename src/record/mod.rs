//! Recording: every call gets a stereo WAV (left: caller; right: what the
//! gateway, later the agent, sent) and an `events.jsonl`, under
//! `recordings/YYYY-MM-DD/<call-id>/`. Flushed periodically so a crash loses
//! at most one flush interval plus the writer's rest (`WRITER_BATCH`);
//! [`repair`] fixes headers after a crash.

mod repair;

pub use repair::{repair_all, repair_wav, RepairOutcome};

use crate::call::CallEvent;
use serde_json::Value;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Name of the stereo recording inside a call's directory.
pub const WAV_NAME: &str = "call.wav";
/// Name of the event log inside a call's directory.
pub const EVENTS_NAME: &str = "events.jsonl";
/// Present while a call is being recorded; removed when finalised.
pub const IN_PROGRESS_MARKER: &str = ".recording";

/// Bytes of the canonical PCM WAV header this recorder writes.
const HEADER_LEN: u64 = 44;
/// Audio kept in memory before it is handed to the writer even without a
/// flush: 0.5 s of 8 kHz stereo (what a call holds is what it costs in RAM).
const MAX_PENDING: usize = 16 * 1024;
/// The events file's write buffer.
const EVENTS_BUFFER: usize = 4 * 1024;
/// Stereo sample pairs interleaved on the stack at a time (one 20 ms frame
/// at 8 kHz).
const INTERLEAVE_BLOCK: usize = 160;
/// Chunks that may wait for the writer thread; past this, a call writes its
/// own chunk (correct, only slower: every chunk carries its file offset).
const WRITER_QUEUE: usize = 1024;
/// How long the writer lets chunks gather between batches (audio reaches
/// the disk at most this much later than a flush hands it over).
const WRITER_BATCH: Duration = Duration::from_millis(100);
/// The writer thread's nice value (the media threads keep the default 0).
#[cfg(target_os = "linux")]
const WRITER_NICE: libc::c_int = 10;
/// How long finalising waits for the writer to catch up with a call.
const FINALIZE_WAIT: Duration = Duration::from_secs(10);

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

/// The 44-byte header of a 16-bit PCM WAV holding `data_len` bytes.
fn wav_header(channels: u16, rate: u32, data_len: u64) -> [u8; HEADER_LEN as usize] {
    let data = u32::try_from(data_len).unwrap_or(u32::MAX - 36);
    let block = channels * 2;
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(data.saturating_add(36)).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&(rate * u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data.to_le_bytes());
    h
}

/// What the writer has done for one recording.
#[derive(Default)]
struct Progress {
    state: Mutex<ProgressState>,
    caught_up: Condvar,
}

#[derive(Default)]
struct ProgressState {
    /// Chunks handed out and not yet written.
    queued: usize,
    /// Audio bytes on disk, contiguous from the header (what the header says).
    end: u64,
    /// The first write error, reported at the next flush.
    error: Option<String>,
}

/// One stretch of a recording's audio, at its place in the file.
struct Chunk {
    file: Arc<File>,
    offset: u64,
    bytes: Vec<u8>,
    progress: Arc<Progress>,
    channels: u16,
    rate: u32,
}

impl Chunk {
    /// Write the audio at its offset, then the header's lengths: a crash
    /// leaves a file whose header covers what reached the disk.
    fn write(self) {
        let result = self.file.write_all_at(&self.bytes, self.offset);
        let mut st = self
            .progress
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok(()) => {
                let end = self.offset - HEADER_LEN + self.bytes.len() as u64;
                if end > st.end {
                    st.end = end;
                    if let Err(e) = self
                        .file
                        .write_all_at(&wav_header(self.channels, self.rate, end), 0)
                    {
                        st.error.get_or_insert(e.to_string());
                    }
                }
            }
            Err(e) => {
                st.error.get_or_insert(e.to_string());
            }
        }
        st.queued = st.queued.saturating_sub(1);
        self.progress.caught_up.notify_all();
    }
}

/// The process's recording writer: one thread that takes whole chunks of
/// audio, so a call's 20 ms tick never waits for the disk.
fn writer() -> Option<&'static SyncSender<Chunk>> {
    writer_thread().map(|(tx, _)| tx)
}

/// The writer's queue and its thread (to cut its rest short), started on
/// first use; `None` when the thread could not start.
fn writer_thread() -> Option<&'static (SyncSender<Chunk>, std::thread::Thread)> {
    static WRITER: OnceLock<Option<(SyncSender<Chunk>, std::thread::Thread)>> = OnceLock::new();
    WRITER
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<Chunk>(WRITER_QUEUE);
            std::thread::Builder::new()
                .name("voicegate-recorder".into())
                .spawn(move || {
                    // Background work: below the media threads, so a batch
                    // of writes never delays a call's 20 ms step on a busy
                    // box (on Linux the nice value is per thread).
                    // SAFETY: setpriority on the calling thread, no pointers.
                    #[cfg(target_os = "linux")]
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, 0, WRITER_NICE);
                    }
                    // Block only while idle. With calls up, the thread rests
                    // between batches: a call's hand-off then finds no one
                    // waiting and wakes no one (a futex wake and a context
                    // switch per chunk were ~10 % of the media path's CPU at
                    // 200 calls). A recording being finalised cuts the rest
                    // short (`wake_writer`).
                    while let Ok(first) = rx.recv() {
                        first.write();
                        for chunk in rx.try_iter() {
                            chunk.write();
                        }
                        std::thread::park_timeout(WRITER_BATCH);
                    }
                })
                .map_err(|e| tracing::warn!(error = %e, "no recording writer thread: calls write their own audio"))
                .ok()
                .map(|handle| (tx, handle.thread().clone()))
        })
        .as_ref()
}

/// Have the writer take its queue now rather than at the end of its rest.
fn wake_writer() {
    if let Some((_, thread)) = writer_thread() {
        thread.unpark();
    }
}

/// The audio side of a recording: interleaved 16-bit samples gathered in
/// memory and handed to the writer in whole chunks.
struct WavOut {
    file: Arc<File>,
    channels: u16,
    rate: u32,
    pending: Vec<u8>,
    /// Audio bytes handed out so far (the next chunk's place after the header).
    handed: u64,
    progress: Arc<Progress>,
    /// The writer thread's queue (`None`: it could not start).
    writer: Option<SyncSender<Chunk>>,
}

impl WavOut {
    fn hand_off(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = std::mem::replace(&mut self.pending, Vec::with_capacity(MAX_PENDING));
        let chunk = Chunk {
            file: self.file.clone(),
            offset: HEADER_LEN + self.handed,
            progress: self.progress.clone(),
            channels: self.channels,
            rate: self.rate,
            bytes,
        };
        self.handed += chunk.bytes.len() as u64;
        self.progress
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .queued += 1;
        // With the writer's queue full (a disk slower than the calls), or no
        // writer thread at all, the call writes its own chunk: late, never lost.
        let refused = match &self.writer {
            Some(w) => match w.try_send(chunk) {
                Ok(()) => None,
                Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => Some(c),
            },
            None => Some(chunk),
        };
        if let Some(chunk) = refused {
            chunk.write();
        }
    }

    /// Wait (bounded) until every chunk handed out is on disk; the first error.
    fn settle(&self, patience: Duration) -> std::io::Result<()> {
        wake_writer();
        let st = self
            .progress
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (mut st, timeout) = self
            .progress
            .caught_up
            .wait_timeout_while(st, patience, |s| s.queued > 0)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if timeout.timed_out() {
            return Err(std::io::Error::other(
                "the recording writer did not catch up",
            ));
        }
        match st.error.take() {
            Some(e) => Err(std::io::Error::other(e)),
            None => Ok(()),
        }
    }

    /// The first write error so far, without waiting.
    fn take_error(&self) -> Option<String> {
        self.progress
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .error
            .take()
    }
}

/// Writes one call's recording and event log.
pub struct CallRecorder {
    dir: PathBuf,
    wav: Option<WavOut>,
    events: BufWriter<File>,
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
        let channels = 2;
        let file = File::create(dir.join(WAV_NAME))?;
        file.write_all_at(&wav_header(channels, rate, 0), 0)?;
        // A call writes a few events a second at most: 4 KiB holds a
        // flush interval's worth (std's default 8 KiB is per call, ×1,000).
        let events = BufWriter::with_capacity(EVENTS_BUFFER, File::create(dir.join(EVENTS_NAME))?);
        Ok(Self {
            dir,
            wav: Some(WavOut {
                file: Arc::new(file),
                channels,
                rate,
                pending: Vec::with_capacity(MAX_PENDING),
                handed: 0,
                progress: Arc::default(),
                writer: writer().cloned(),
            }),
            events,
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

    /// Append one stretch of audio; `left` and `right` are padded to the same
    /// length. Kept in memory until the next [`flush`](Self::flush) (or
    /// 0.5 s of audio); write errors are reported by `flush` and `finalize`.
    pub fn write(&mut self, left: &[i16], right: &[i16]) {
        let Some(wav) = self.wav.as_mut() else {
            return;
        };
        let n = left.len().max(right.len());
        if wav.pending.len() + n * 4 > MAX_PENDING {
            wav.hand_off();
        }
        if left.len() == right.len() {
            // The usual tick: both sides 20 ms. Interleaved a block at a
            // time on the stack (vector instructions, one store per sample
            // pair), then appended in one copy: the buffer's cold cache
            // lines see whole-line writes, not 2-byte ones.
            let mut block = [0u8; 4 * INTERLEAVE_BLOCK];
            for (l, r) in left
                .chunks(INTERLEAVE_BLOCK)
                .zip(right.chunks(INTERLEAVE_BLOCK))
            {
                let out = &mut block[..4 * l.len()];
                for ((frame, l), r) in out.chunks_exact_mut(4).zip(l).zip(r) {
                    let pair = u32::from(*l as u16) | (u32::from(*r as u16) << 16);
                    frame.copy_from_slice(&pair.to_le_bytes());
                }
                wav.pending.extend_from_slice(out);
            }
        } else {
            let base = wav.pending.len();
            // Zeroed first, so a shorter side is padded with silence.
            wav.pending.resize(base + n * 4, 0);
            let out = &mut wav.pending[base..];
            for (frame, l) in out.chunks_exact_mut(4).zip(left) {
                frame[..2].copy_from_slice(&l.to_le_bytes());
            }
            for (frame, r) in out.chunks_exact_mut(4).zip(right) {
                frame[2..].copy_from_slice(&r.to_le_bytes());
            }
        }
        self.frames += n as u64;
    }

    /// Log one event: `t_s` (seconds since answer), wall-clock `ts`, then
    /// the event's `kind` and fields.
    pub fn event(&mut self, t: Duration, event: &CallEvent) -> std::io::Result<()> {
        let mut obj = event.to_json();
        obj.insert(
            "t_s".into(),
            Value::from((t.as_secs_f64() * 1000.0).round() / 1000.0),
        );
        obj.insert(
            "ts".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        serde_json::to_writer(&mut self.events, &Value::Object(obj))?;
        self.events.write_all(b"\n")
    }

    /// Hand the audio gathered so far to the writer (it reaches the disk,
    /// header included, a moment later) and push the events to disk.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(wav) = self.wav.as_mut() {
            wav.hand_off();
            if let Some(e) = wav.take_error() {
                return Err(std::io::Error::other(e));
            }
        }
        self.events.flush()
    }

    /// Write the rest of the audio and wait for it to reach the file, with
    /// its final header; remove the in-progress marker.
    pub fn finalize(mut self) -> std::io::Result<PathBuf> {
        if let Some(mut wav) = self.wav.take() {
            wav.hand_off();
            wav.settle(FINALIZE_WAIT)?;
        }
        self.events.flush()?;
        std::fs::remove_file(self.dir.join(IN_PROGRESS_MARKER)).ok();
        Ok(self.dir.clone())
    }
}

impl Drop for CallRecorder {
    /// A recorder dropped without `finalize` (a call task that failed) still
    /// hands its audio to the writer; the marker stays, for `repair`.
    fn drop(&mut self) {
        if let Some(wav) = self.wav.as_mut() {
            wav.hand_off();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stereo_and_events() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rec = CallRecorder::create(tmp.path(), "2026-11-24", "abc/../x@h", 8000).unwrap();
        rec.write(&[1; 160], &[2; 160]);
        rec.event(
            Duration::from_millis(1500),
            &CallEvent::Dtmf(crate::call::event::Dtmf {
                digit: "#".into(),
                source: "rfc4733".into(),
            }),
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
    fn a_long_recording_is_whole_and_in_order_across_chunks_and_flushes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rec = CallRecorder::create(tmp.path(), "d", "long", 8000).unwrap();
        // 30 s of 20 ms frames, a flush every 50 frames for the first 14 s,
        // then only the 16 KiB cap hands the audio on.
        for f in 0..1500i32 {
            let left: Vec<i16> = (0..160).map(|i| ((f * 160 + i) % 30000) as i16).collect();
            let right: Vec<i16> = left.iter().map(|s| -s).collect();
            rec.write(&left, &right);
            if f % 50 == 49 && f < 700 {
                rec.flush().unwrap();
            }
        }
        assert_eq!(rec.duration(8000), Duration::from_secs(30));
        let dir = rec.finalize().unwrap();
        let r = hound::WavReader::open(dir.join(WAV_NAME)).unwrap();
        assert_eq!(r.spec().channels, 2);
        assert_eq!(r.spec().sample_rate, 8000);
        assert_eq!(r.duration(), 1500 * 160);
        let s: Vec<i16> = r.into_samples().map(|s| s.unwrap()).collect();
        for (n, pair) in s.chunks(2).enumerate() {
            let want = (n as i32 % 30000) as i16;
            assert_eq!((pair[0], pair[1]), (want, -want), "sample {n}");
        }
    }

    #[test]
    fn uneven_and_long_stretches_are_padded_and_kept_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rec = CallRecorder::create(tmp.path(), "d", "uneven", 8000).unwrap();
        // 50 ms on both sides (more than one interleave block), then a
        // shorter bot side and a shorter caller side: padded with silence.
        let left: Vec<i16> = (0..400).map(|i| i as i16 - 200).collect();
        let right: Vec<i16> = left.iter().map(|s| s.wrapping_mul(3)).collect();
        rec.write(&left, &right);
        rec.write(&[5; 160], &[6; 100]);
        rec.write(&[-7; 80], &[-8; 160]);
        let dir = rec.finalize().unwrap();
        let s: Vec<i16> = hound::WavReader::open(dir.join(WAV_NAME))
            .unwrap()
            .into_samples()
            .map(|s| s.unwrap())
            .collect();
        assert_eq!(s.len(), 2 * (400 + 160 + 160));
        for (n, pair) in s.chunks(2).enumerate() {
            let want = match n {
                0..400 => (left[n], right[n]),
                400..500 => (5, 6),
                500..560 => (5, 0),
                560..640 => (-7, -8),
                _ => (0, -8),
            };
            assert_eq!((pair[0], pair[1]), want, "sample pair {n}");
        }
    }

    #[test]
    fn a_flush_reaches_the_disk_with_a_header_that_covers_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rec = CallRecorder::create(tmp.path(), "d", "crash", 8000).unwrap();
        for _ in 0..50 {
            rec.write(&[7; 160], &[9; 160]);
        }
        rec.flush().unwrap();
        let path = rec.dir().join(WAV_NAME);
        // As a process killed now would leave it: no finalize.
        let mut frames = 0;
        for _ in 0..200 {
            if let Ok(r) = hound::WavReader::open(&path) {
                frames = r.duration();
                if frames == 50 * 160 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(frames, 50 * 160, "flushed audio on disk, header included");
        assert!(rec.dir().join(IN_PROGRESS_MARKER).exists());
    }

    #[test]
    fn with_the_writer_queue_full_or_no_writer_the_call_writes_its_own_audio() {
        for writer in ["full", "none"] {
            let tmp = tempfile::tempdir().unwrap();
            let mut rec = CallRecorder::create(tmp.path(), "d", writer, 8000).unwrap();
            // A writer that never reads: its one-chunk queue is full after
            // the first hand-off, which (never written) stays queued.
            let (tx, stalled) = sync_channel::<Chunk>(1);
            let mut held = Vec::new();
            if let Some(w) = rec.wav.as_mut() {
                w.writer = (writer == "full").then_some(tx);
            }
            for f in 0..500i32 {
                let left: Vec<i16> = (0..160).map(|i| ((f * 160 + i) % 30000) as i16).collect();
                rec.write(&left, &left);
            }
            rec.flush().unwrap_or(());
            if writer == "full" {
                // Exactly the first chunk went to the queue; write it now,
                // as the writer thread would have, after all the others.
                held.extend(stalled.try_iter());
                assert_eq!(held.len(), 1, "one chunk queued, the rest written inline");
                for chunk in held {
                    chunk.write();
                }
            }
            let dir = rec.finalize().unwrap();
            let r = hound::WavReader::open(dir.join(WAV_NAME)).unwrap();
            assert_eq!(r.duration(), 500 * 160, "{writer}: every frame on disk");
            let s: Vec<i16> = r.into_samples().map(|s| s.unwrap()).collect();
            for (n, pair) in s.chunks(2).enumerate() {
                let want = (n as i32 % 30000) as i16;
                assert_eq!((pair[0], pair[1]), (want, want), "{writer}: sample {n}");
            }
        }
    }

    #[test]
    fn chunks_written_out_of_order_make_the_same_file() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = CallRecorder::create(tmp.path(), "d", "order", 8000).unwrap();
        let wav = rec.wav.as_ref().unwrap();
        let chunk = |offset: u64, value: u8| Chunk {
            file: wav.file.clone(),
            offset: HEADER_LEN + offset,
            bytes: vec![value; 400],
            progress: wav.progress.clone(),
            channels: 2,
            rate: 8000,
        };
        wav.progress.state.lock().unwrap().queued = 2;
        // The writer was full: the call wrote its second chunk itself first.
        chunk(400, 2).write();
        chunk(0, 1).write();
        wav.settle(Duration::from_secs(1)).unwrap();
        let bytes = std::fs::read(rec.dir().join(WAV_NAME)).unwrap();
        assert_eq!(bytes.len(), 44 + 800);
        assert_eq!(&bytes[40..44], &800u32.to_le_bytes());
        assert!(bytes[44..444].iter().all(|b| *b == 1));
        assert!(bytes[444..].iter().all(|b| *b == 2));
    }

    #[test]
    fn same_call_id_twice_does_not_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let a = CallRecorder::create(tmp.path(), "d", "same", 8000).unwrap();
        let b = CallRecorder::create(tmp.path(), "d", "same", 8000).unwrap();
        assert_ne!(a.dir(), b.dir());
    }
}
