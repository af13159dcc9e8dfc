//! Hot-path costs: SIP parse, RTP packet → decoded 16 kHz frame, recording write.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use voicegate::config::Codec;
use voicegate::media::jitter::JitterBuffer;
use voicegate::media::resample::Upsampler;
use voicegate::media::session::{MediaParams, MediaSession};
use voicegate::record::CallRecorder;

const INVITE: &str = "INVITE sip:bot@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0;rport\r\n\
From: \"Caller\" <sip:+15550123@127.0.0.1:5061>;tag=abc123\r\n\
To: <sip:bot@127.0.0.1:5060>\r\nCall-ID: 1-2345@127.0.0.1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:sipp@127.0.0.1:5061>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n\
Content-Length: 180\r\n\r\nv=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n";

fn sip_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_invite", |b| {
        b.iter(|| rsipstack::sip::SipMessage::try_from(black_box(INVITE)).is_ok())
    });
    g.bench_function("negotiate_sdp", |b| {
        let body = &INVITE[INVITE.find("v=0").unwrap_or(0)..];
        b.iter(|| {
            voicegate::sip::sdp::negotiate(black_box(body.as_bytes()), &[Codec::Pcmu, Codec::Pcma])
                .is_ok()
        })
    });
    g.finish();
}

fn rtp_to_16k(c: &mut Criterion) {
    let params = MediaParams {
        codec: Codec::Pcma,
        dtmf_payload_type: Some(101),
        remote: "127.0.0.1:6000".parse().unwrap_or_else(|_| unreachable!()),
    };
    let mut sender =
        MediaSession::new(params.clone(), Duration::from_millis(20), 1, Duration::ZERO);
    let tone: Vec<i16> = (0..160)
        .map(|n| ((n as f32 * 0.3).sin() * 8000.0) as i16)
        .collect();
    let packets: Vec<_> = (0..64)
        .map(|_| sender.encode_frame(&tone).to_vec())
        .collect();
    let mut g = c.benchmark_group("media");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rtp_packet_to_16k_frame", |b| {
        let mut rx =
            MediaSession::new(params.clone(), Duration::from_millis(20), 2, Duration::ZERO);
        let mut up = Upsampler::new().unwrap_or_else(|_| unreachable!());
        let from = params.remote;
        let mut out = Vec::with_capacity(320);
        let mut i = 0usize;
        let mut packet = Vec::new();
        b.iter(|| {
            // A stream in order, however many iterations criterion runs:
            // the payloads cycle, the sequence number and timestamp go on
            // (replaying the same 64 packets would make all but the first
            // 64 late, and measure the buffer dropping them).
            packet.clear();
            packet.extend_from_slice(&packets[i % packets.len()]);
            packet[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            packet[4..8].copy_from_slice(&((i as u32).wrapping_mul(160)).to_be_bytes());
            rx.on_datagram(Duration::ZERO, from, &packet);
            i += 1;
            let (frame, _) = rx.pull_frame();
            out.clear();
            up.process(&frame, &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("encode_outgoing_frame", |b| {
        let mut tx =
            MediaSession::new(params.clone(), Duration::from_millis(20), 3, Duration::ZERO);
        b.iter(|| black_box(tx.encode_frame(black_box(&tone)).len()))
    });
    g.finish();
}

/// The playout buffer alone, 60 ms of audio per iteration (three 20 ms
/// frames out): packets of 20 ms are handed out as they came, packets of
/// 30 ms (SIPp's, some trunks') are re-cut into 20 ms frames.
fn jitter(c: &mut Criterion) {
    let mut g = c.benchmark_group("jitter");
    g.throughput(Throughput::Elements(3));
    for ptime_ms in [20usize, 30] {
        let samples = 8 * ptime_ms;
        let packet: Vec<i16> = (0..samples).map(|n| (n as i16) * 7).collect();
        let per_iteration = 60 / ptime_ms;
        // One buffer (hot in cache), then 1,000 stepped in turn, as the
        // media engine steps its calls: each call's buffer is cold when its
        // turn comes, and what it costs is mostly the memory it touches.
        for calls in [1usize, 1000] {
            g.bench_function(
                format!("{ptime_ms}ms_packets_to_20ms_frames_{calls}_calls"),
                |b| {
                    let mut buffers: Vec<(JitterBuffer, u16)> =
                        (0..calls).map(|_| (JitterBuffer::new(3), 0)).collect();
                    let mut turn = 0usize;
                    b.iter(|| {
                        let (buffer, seq) = &mut buffers[turn % calls];
                        turn += 1;
                        for _ in 0..per_iteration {
                            buffer.push(*seq, black_box(&packet));
                            *seq = seq.wrapping_add(1);
                        }
                        let mut sum = 0i32;
                        for _ in 0..3 {
                            if let Some(frame) = buffer.pop_frame() {
                                sum += i32::from(frame[0]);
                            }
                        }
                        black_box(sum)
                    })
                },
            );
        }
    }
    g.finish();
}

fn recording(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
    let mut rec =
        CallRecorder::create(dir.path(), "bench", "call", 8000).unwrap_or_else(|_| unreachable!());
    let left = [100i16; 160];
    let right = [-100i16; 160];
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    // One 20 ms frame, with the once-a-second flush amortised over 50 frames.
    let mut frames = 0u32;
    g.bench_function("write_20ms_stereo", |b| {
        b.iter(|| {
            rec.write(black_box(&left), black_box(&right));
            frames += 1;
            if frames.is_multiple_of(50) {
                let _ = rec.flush();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, sip_parse, rtp_to_16k, jitter, recording);
criterion_main!(benches);
