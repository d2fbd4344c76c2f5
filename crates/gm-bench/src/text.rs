//! Samples of the byte-level text data set shown as text, and prompts read from it.

use gm_core::tch::{Kind, Tensor};
use gm_core::{GmError, Result};

/// Whether a data set's examples are bytes of text.
pub fn is_text(dataset: &str) -> bool {
    dataset == "kjv_text"
}

/// Byte values as text: printable ASCII and newlines as they are, anything else as `?` (a
/// sample of an untrained model holds every byte value).
pub fn bytes_as_text(values: &[i64]) -> String {
    values
        .iter()
        .map(|&v| match u8::try_from(v) {
            Ok(b) if b == b'\n' || (0x20..0x7f).contains(&b) => b as char,
            _ => '?',
        })
        .collect()
}

/// Samples `[n, length]` of byte values as text, each under a `--- sample i ---` line.
pub fn samples_as_text(samples: &Tensor) -> Result<String> {
    let size = samples.size();
    let n = size.first().copied().unwrap_or(0);
    let rows = samples.f_reshape([n, -1])?.f_to_kind(Kind::Int64)?;
    let mut out = String::new();
    for i in 0..n {
        let values = Vec::<i64>::try_from(rows.f_get(i)?)?;
        out.push_str(&format!("--- sample {i} ---\n{}\n", bytes_as_text(&values)));
    }
    Ok(out)
}

/// The share of the words of `text` (runs of letters, lower-cased) that occur in `corpus`, and
/// how many words there were: a plain measure of how much of a sample is spelled as in the
/// training text.
pub fn known_word_share(text: &str, corpus: &[u8]) -> (f64, usize) {
    let words = |t: &str| -> Vec<String> {
        t.split(|ch: char| !ch.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
            .map(|w| w.to_ascii_lowercase())
            .collect()
    };
    let vocabulary: std::collections::HashSet<String> = words(&String::from_utf8_lossy(corpus))
        .into_iter()
        .collect();
    let sample = words(text);
    let known = sample.iter().filter(|w| vocabulary.contains(*w)).count();
    (known as f64 / sample.len().max(1) as f64, sample.len())
}

/// A prompt as values: the bytes of `s` for text, else comma-separated integers. `key` names the
/// option in errors.
pub fn parse_values(s: &str, text: bool, key: &str) -> Result<Vec<i64>> {
    if text {
        return Ok(s.bytes().map(i64::from).collect());
    }
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<i64>().map_err(|_| {
                GmError::config(
                    key,
                    format!("expected comma-separated integers, found {t:?}"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_odd_bytes_are_marked() {
        let values = parse_values("In the\nbeginning", true, "prompt").unwrap();
        assert_eq!(bytes_as_text(&values), "In the\nbeginning");
        assert_eq!(bytes_as_text(&[0, 200, 65, 9]), "??A?");
        assert_eq!(
            parse_values("1, 2,3", false, "prompt").unwrap(),
            vec![1, 2, 3]
        );
        assert!(parse_values("1,x", false, "prompt")
            .unwrap_err()
            .to_string()
            .contains("prompt"));
        let (share, n) = known_word_share("The LORD saith, Behold thx", b"the lord said behold");
        assert_eq!(n, 5);
        assert!((share - 0.6).abs() < 1e-12, "{share}");
        let samples = Tensor::from_slice(&[72i64, 105, 33, 10]).reshape([2, 2]);
        assert_eq!(
            samples_as_text(&samples).unwrap(),
            "--- sample 0 ---\nHi\n--- sample 1 ---\n!\n\n"
        );
    }
}
