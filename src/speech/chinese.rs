//! Chinese text as the rest of the gateway reads it: every transcript in
//! Simplified characters (Whisper writes Traditional about half the time), and
//! keywords found by sound as well as by character — toneless pinyin with
//! homophone-tolerant scoring, so 账单/帐单/证单 and 人工/人功 meet.

use pinyin::ToPinyin;
use std::sync::OnceLock;

/// Whether `c` is a CJK ideograph (Han character).
pub fn is_han(c: char) -> bool {
    matches!(u32::from(c), 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF)
}

/// Whether `text` holds any Han character.
pub fn has_han(text: &str) -> bool {
    text.chars().any(is_han)
}

fn t2s() -> Option<&'static ferrous_opencc::OpenCC> {
    static CONVERTER: OnceLock<Option<ferrous_opencc::OpenCC>> = OnceLock::new();
    CONVERTER
        .get_or_init(|| {
            ferrous_opencc::OpenCC::from_config(ferrous_opencc::config::BuiltinConfig::T2s)
                .map_err(|e| tracing::error!(error = %e, "Traditional→Simplified tables unusable"))
                .ok()
        })
        .as_ref()
}

/// `text` in Simplified characters (OpenCC's T2S tables, phrase-aware);
/// text without Han characters is returned as it is.
pub fn to_simplified(text: &str) -> String {
    if !has_han(text) {
        return text.to_string();
    }
    match t2s() {
        Some(c) => c.convert(text),
        None => text.to_string(),
    }
}

/// Whisper's repetition loops on short Chinese audio ("微微微微微…" for 喂):
/// a run of three or more of the same Han character becomes one, so the
/// text — and the speech rate measured from it — says what was said.
pub fn collapse_loops(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] == c {
            j += 1;
        }
        let run = j - i;
        let keep = if is_han(c) && run >= 3 { 1 } else { run };
        out.extend(std::iter::repeat_n(c, keep));
        i = j;
    }
    out
}

/// A toneless pinyin syllable split into initial and final.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Syllable {
    initial: &'static str,
    rest: String,
}

const INITIALS: &[&str] = &[
    "zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "r",
    "z", "c", "s", "y", "w",
];

fn syllable(plain: &str) -> Syllable {
    for i in INITIALS {
        if let Some(rest) = plain.strip_prefix(i) {
            if !rest.is_empty() {
                return Syllable {
                    initial: i,
                    rest: rest.to_string(),
                };
            }
        }
    }
    Syllable {
        initial: "",
        rest: plain.to_string(),
    }
}

/// Initials a phone line and a southern accent blur (z/zh, c/ch, s/sh, n/l, f/h, l/r).
fn initials_close(a: &str, b: &str) -> bool {
    fn fold(s: &str) -> &str {
        match s {
            "zh" => "z",
            "ch" => "c",
            "sh" => "s",
            "n" | "r" => "l",
            "f" => "h",
            other => other,
        }
    }
    fold(a) == fold(b)
}

/// Finals that differ only by -n/-ng (an/ang, en/eng, in/ing), or by the
/// r-colouring Whisper hears in e/er (余额 yu e, 语儿 yu er).
fn finals_close(a: &str, b: &str) -> bool {
    let fold = |s: &str| {
        if s == "er" {
            return Some("e".to_string());
        }
        s.strip_suffix('g')
            .filter(|r| r.ends_with('n'))
            .map(str::to_string)
    };
    let a2 = fold(a).unwrap_or_else(|| a.to_string());
    let b2 = fold(b).unwrap_or_else(|| b.to_string());
    a2 == b2
}

/// The nasal coda of a final: `n`, `ng` or none.
fn coda(s: &str) -> &'static str {
    if s.ends_with("ng") {
        "ng"
    } else if s.ends_with('n') {
        "n"
    } else {
        ""
    }
}

/// How alike two syllables sound: 1 the same, 0.9 blurred initial or -n/-ng,
/// 0.7 same initial and the same kind of ending with another vowel
/// (zhang/zheng), 0 otherwise.
fn syllable_similarity(a: &Syllable, b: &Syllable) -> f64 {
    if a == b {
        return 1.0;
    }
    let initial_same = a.initial == b.initial;
    let initial_close = initial_same || initials_close(a.initial, b.initial);
    if initial_close && (a.rest == b.rest || finals_close(&a.rest, &b.rest)) {
        return 0.9;
    }
    if initial_same && !a.initial.is_empty() && coda(&a.rest) == coda(&b.rest) {
        return 0.7;
    }
    0.0
}

/// Toneless pinyin of each character of `text`; `None` for characters that
/// are not Han (punctuation, Latin), which break a match.
fn syllables(text: &str) -> Vec<(char, Option<Syllable>)> {
    text.chars()
        .map(|c| {
            let p = if is_han(c) {
                c.to_pinyin().map(|p| syllable(p.plain()))
            } else {
                None
            };
            (c, p)
        })
        .collect()
}

/// A keyword found in a transcript by its sound.
#[derive(Debug, Clone, PartialEq)]
pub struct SoundMatch {
    /// 1.0 the same characters, 0.95 a homophone, less for a near sound.
    pub score: f64,
    /// What the transcript holds where the keyword was heard.
    pub heard: String,
}

/// Where `keyword` (Han characters, two or more) occurs in `text` by
/// character or by toneless pinyin, the best place first. Keywords of one
/// character match by character only: one syllable is too easily misheard.
pub fn find_by_sound(text: &str, keyword: &str) -> Option<SoundMatch> {
    let keyword: String = keyword.chars().filter(|c| !c.is_whitespace()).collect();
    if keyword.is_empty() {
        return None;
    }
    if text.contains(&keyword) {
        return Some(SoundMatch {
            score: 1.0,
            heard: keyword,
        });
    }
    let kw = syllables(&keyword);
    if kw.len() < 2 || kw.iter().any(|(_, s)| s.is_none()) {
        return None;
    }
    let tx = syllables(text);
    let mut best: Option<SoundMatch> = None;
    for window in tx.windows(kw.len()) {
        let mut total = 0.0;
        let mut ok = true;
        for ((_, a), (_, b)) in window.iter().zip(&kw) {
            let s = match (a, b) {
                (Some(a), Some(b)) => syllable_similarity(a, b),
                _ => 0.0,
            };
            if s < 0.7 {
                ok = false;
                break;
            }
            total += s;
        }
        if !ok {
            continue;
        }
        let mean = total / kw.len() as f64;
        // Homophones (the same toneless syllables) rank just under the very
        // characters; a near sound needs most of the keyword exact.
        let score = if mean >= 1.0 { 0.95 } else { mean * 0.95 };
        if score >= 0.8 && best.as_ref().is_none_or(|b| score > b.score) {
            best = Some(SoundMatch {
                score: (score * 100.0).round() / 100.0,
                heard: window.iter().map(|(c, _)| *c).collect(),
            });
        }
    }
    best
}

/// The character before byte offset `pos` of `text`, if any.
pub fn char_before(text: &str, pos: usize) -> Option<char> {
    text.get(..pos).and_then(|s| s.chars().next_back())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traditional_transcripts_become_simplified() {
        // 帳 becomes 帐 (a Simplified form too): the keyword 账单 meets it by sound.
        let bill = to_simplified("我想查一下帳單");
        assert_eq!(bill, "我想查一下帐单");
        assert!(find_by_sound(&bill, "账单").is_some());
        assert_eq!(to_simplified("我的快遞到哪裡了"), "我的快递到哪里了");
        assert_eq!(to_simplified("付款失敗，我很生氣"), "付款失败，我很生气");
        assert_eq!(to_simplified("hello there"), "hello there");
    }

    #[test]
    fn repetition_loops_collapse_but_words_stay() {
        assert_eq!(collapse_loops("微微微微微微微微"), "微");
        assert_eq!(collapse_loops("清清清清清清好。"), "清好。");
        assert_eq!(collapse_loops("谢谢你，天天开心"), "谢谢你，天天开心");
        assert_eq!(collapse_loops("hello  all"), "hello  all");
    }

    #[test]
    fn homophones_and_near_sounds_meet_but_other_words_do_not() {
        assert_eq!(
            find_by_sound("我想查账单", "账单").map(|m| m.score),
            Some(1.0)
        );
        let m = find_by_sound("我想查帐单", "账单").expect("homophone");
        assert_eq!((m.score, m.heard.as_str()), (0.95, "帐单"));
        let m = find_by_sound("为后再人功苦苦", "人工").expect("人功 sounds like 人工");
        assert_eq!(m.heard, "人功");
        let m = find_by_sound("我要查证单", "账单").expect("zheng/zhang dan");
        assert!(m.score >= 0.8 && m.score < 0.95, "{m:?}");
        let m = find_by_sound("我想查一下语儿", "余额").expect("yu er sounds like yu e");
        assert_eq!(m.heard, "语儿");
        assert_eq!(find_by_sound("今天天气真好", "账单"), None);
        assert_eq!(find_by_sound("我有两个女儿", "余额"), None);
        assert_eq!(find_by_sound("我家的猫喜欢在钢琴上睡觉", "人工"), None);
        assert_eq!(
            find_by_sound("我很烦", "烦"),
            Some(SoundMatch {
                score: 1.0,
                heard: "烦".into()
            })
        );
        assert_eq!(
            find_by_sound("我很凡", "烦"),
            None,
            "one syllable: characters only"
        );
    }
}
