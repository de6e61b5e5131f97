//! JUnit XML for a corpus run, valid against the Apache Ant JUnit schema (the de facto
//! standard XSD that Jenkins, GitLab and GitHub's JUnit actions read): `<testsuites>`
//! holding one `<testsuite>` per repro, each with one `<testcase>` (a `<failure>` for a
//! verdict `--fail-on` lists, an `<error>` for a repro that could not be replayed, whose
//! text is the report) and the report as the suite's `<system-out>` (that schema has no
//! per-test-case output), the replay's stderr as its `<system-err>`.

use std::fmt::Write as _;
use std::path::Path;

use super::outcome::{EntryResult, Summary, entry_code};
use crate::exit_code::CliError;

/// `s` escaped for XML text or attributes; characters XML 1.0 cannot hold (control
/// characters other than tab, newline and carriage return) become U+FFFD.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A `token` attribute: no leading, trailing or repeated spaces, no line breaks, not empty.
fn token(s: &str) -> String {
    let t = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.is_empty() { "-".into() } else { esc(&t) }
}

/// The JUnit document for `results`.
pub fn document(results: &[EntryResult], summary: &Summary) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for (id, r) in results.iter().enumerate() {
        let code = entry_code(r.verdict, r.error.as_ref(), &summary.fail_on);
        let (failures, errors) = match (&r.error, code) {
            (Some(_), _) => (0, 1),
            (None, 0) => (0, 0),
            (None, _) => (1, 0),
        };
        let shard = summary.shard.map_or_else(|| "all".to_string(), |s| s.to_string());
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" package=\"vmrr.replay\" id=\"{id}\" timestamp=\"{}\" hostname=\"{}\" tests=\"1\" failures=\"{failures}\" errors=\"{errors}\" time=\"{:.3}\">",
            token(&r.path),
            esc(&r.started),
            token(&r.hostname),
            r.seconds
        );
        x.push_str("    <properties>\n");
        for (name, value) in [
            ("verdict", r.status().to_string()),
            ("exit_code", code.to_string()),
            ("recorded_exits", r.exits.to_string()),
            ("corpus", summary.corpus.clone()),
            ("shard", shard),
        ] {
            let _ = writeln!(x, "      <property name=\"{name}\" value=\"{}\"/>", esc(&value));
        }
        x.push_str("    </properties>\n");
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"vmrr.replay\" time=\"{:.3}\"",
            token(&r.path),
            r.seconds
        );
        let text = r.text();
        match (&r.error, code) {
            (Some(e), _) => {
                let _ = write!(
                    x,
                    ">\n      <error type=\"exit {}\" message=\"{}\">{}</error>\n    </testcase>\n",
                    e.code,
                    esc(&e.message),
                    esc(&text)
                );
            }
            (None, 0) => x.push_str("/>\n"),
            (None, _) => {
                let _ = write!(
                    x,
                    ">\n      <failure type=\"{}\" message=\"{}\">{}</failure>\n    </testcase>\n",
                    r.status(),
                    esc(&r.detail()),
                    esc(&text)
                );
            }
        }
        let _ = writeln!(x, "    <system-out>{}</system-out>", esc(&text));
        let _ = writeln!(x, "    <system-err>{}</system-err>", esc(&r.stderr));
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

/// Writes the JUnit document to `path` (atomically: a temporary file renamed into place).
///
/// # Errors
/// The file exists (without `force`) or could not be written.
pub fn write(path: &Path, results: &[EntryResult], summary: &Summary, force: bool) -> Result<(), CliError> {
    crate::output::write_bytes(path, &[], force, document(results, summary).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_control_characters_replaced() {
        assert_eq!(esc("a<b>&\"'\u{1}\n"), "a&lt;b&gt;&amp;&quot;&apos;\u{fffd}\n");
        assert_eq!(token("  a \n b  "), "a b");
        assert_eq!(token(""), "-");
    }
}
