//! A short fuzz run on stable, in `make test`: every target of
//! `voicegate::fuzz` over its committed corpus (`fuzz/corpus/<target>/`,
//! which `make fuzz` grows) and over seeded mutations of it. The long,
//! coverage-guided runs are `make fuzz` (cargo-fuzz, nightly).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Mutations per target (each a few µs to a few ms).
const MUTATIONS: usize = 50_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, so a failure reproduces.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\r\n",
    b"\r\n\r\n",
    b";",
    b",",
    b"=",
    b":",
    b"\"",
    b"<",
    b">",
    b"@",
    b"4294967295",
    b"-1",
    b"0",
    b"65536",
    b"18446744073709551616",
    b"\x1b[2J",
    b"%00",
    b"refresher=uas",
    b"a=sendonly",
    b"c=IN IP4 0.0.0.0",
    b"m=audio 0 RTP/AVP 0",
    b"\x80\x00",
    b"\x80\xe5",
    b"data",
    b"RIFF",
    b"WAVE",
    b"fmt ",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&corpus[rng.below(corpus.len())]);
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                out.drain(start..end);
            }
            3 => {
                let word = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(len + 1);
                out.splice(at..at, word.iter().copied());
            }
            4 if len > 0 => {
                out.truncate(rng.below(len));
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let at = rng.below(len + 1);
                    let piece: Vec<u8> = other[from..].iter().take(64).copied().collect();
                    out.splice(at..at, piece);
                }
            }
            _ if len > 0 => {
                // Repeat a slice (lengths and counts that grow).
                let start = rng.below(len);
                let end = (start + 1 + rng.below(8)).min(len);
                let piece = out[start..end].to_vec();
                let at = rng.below(len + 1);
                for _ in 0..rng.below(8) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            _ => out.push(rng.next() as u8),
        }
    }
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations_of_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = Vec::new();
    for (name, target) in voicegate::fuzz::TARGETS {
        let dir = root.join(name);
        let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect();
        assert!(!corpus.is_empty(), "no corpus for {name}");
        corpus.sort();
        let mut rng = Rng(0x5eed_0000 ^ name.len() as u64 ^ (name.as_bytes()[0] as u64) << 32);
        let mut input = Vec::new();
        for n in 0..corpus.len() + MUTATIONS {
            if n < corpus.len() {
                input.clone_from(&corpus[n]);
            } else {
                mutate(&mut rng, &corpus, &mut input);
            }
            if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
                let path = std::env::temp_dir().join(format!("voicegate-fuzz-{name}-{n}"));
                let _ = std::fs::write(&path, &input);
                failures.push(format!(
                    "{name}: input {n} panicked (saved to {})",
                    path.display()
                ));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
