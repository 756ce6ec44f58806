//! The ends of logs: what a failed test prints of each process it ran.

/// The last `lines` lines of `text` (all of it if it has fewer), without a final newline.
pub fn tail(text: &str, lines: usize) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    if lines == 0 {
        return "";
    }
    match text.rmatch_indices('\n').nth(lines - 1) {
        Some((at, _)) => &text[at + 1..],
        None => text,
    }
}

/// A titled section per log, for a failure report: `===== title =====` and the tail.
pub fn sections<'a>(logs: impl IntoIterator<Item = (String, &'a str)>, lines: usize) -> String {
    let mut out = String::new();
    for (title, text) in logs {
        out.push_str(&format!("===== {title} =====\n"));
        out.push_str(tail(text, lines));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\nc", 3), "a\nb\nc");
        assert_eq!(tail("a\nb\nc", 10), "a\nb\nc");
        assert_eq!(tail("a\nb\nc", 0), "");
        assert_eq!(tail("", 5), "");
        assert_eq!(tail("only", 1), "only");
    }

    #[test]
    fn sections_title_each_log() {
        let logs = [("n0".to_string(), "x\ny\n"), ("n1".to_string(), "")];
        assert_eq!(sections(logs, 1), "===== n0 =====\ny\n===== n1 =====\n\n");
    }
}
