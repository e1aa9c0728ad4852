//! The JSON log line (`--log-format json`), written in one pass.
//!
//! One object per line, as tracing-subscriber's JSON format with
//! `flatten_event(true)` wrote it: `timestamp`, `level`, the event's fields
//! (`message` among them), `target`, and `spans` (root first, each span's
//! fields and its `name`) when the event is inside one. What changes is the
//! cost: tracing-subscriber keeps a span's fields as JSON text, and parses
//! that text back into a map on every `record` and for every line, to merge
//! and re-serialize it. Here a span's fields are kept as the members of a
//! JSON object, without the braces, already escaped: a `record` appends to
//! them and a line copies them as they are. Under load that was about a
//! fifth of the service's instructions (docs/performance.md, "The JSON log
//! line written once").
//!
//! Members keep the order they were given in. A field recorded twice on
//! one span appears twice, the later one last; this crate records each
//! field of its spans once (`token`), and JSON readers that do not refuse
//! duplicates (serde_json's `Value`, jq, JavaScript) keep the last.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats a span's fields as JSON object members (`"a":1,"b":"x"`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Members;

impl<'w> FormatFields<'w> for Members {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut members = MemberWriter::new(&mut writer, false);
        fields.record(&mut members);
        members.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let more = !current.fields.is_empty();
        let mut members = MemberWriter::new(&mut current.fields, more);
        fields.record(&mut members);
        members.result
    }
}

/// Formats an event as one JSON line, its spans' members copied from
/// what [`Members`] kept.
#[derive(Debug, Default, Clone, Copy)]
pub struct Line;

impl<S> FormatEvent<S, Members> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, Members>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events from the `log` crate carry their real target in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());

        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = MemberWriter::new(&mut writer, true);
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        if let Some(scope) = ctx.event_scope() {
            writer.write_str(",\"spans\":[")?;
            for (i, span) in scope.from_root().enumerate() {
                if i > 0 {
                    writer.write_char(',')?;
                }
                writer.write_char('{')?;
                let extensions = span.extensions();
                let kept = extensions
                    .get::<FormattedFields<Members>>()
                    .map_or("", |f| f.fields.as_str());
                writer.write_str(kept)?;
                if !kept.is_empty() {
                    writer.write_char(',')?;
                }
                writer.write_str("\"name\":")?;
                string(&mut writer, span.name())?;
                writer.write_char('}')?;
            }
            writer.write_char(']')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes each field it visits as a JSON member, a comma before each but
/// the first unless `more`.
struct MemberWriter<'a, W: fmt::Write> {
    out: &'a mut W,
    more: bool,
    result: fmt::Result,
}

impl<'a, W: fmt::Write> MemberWriter<'a, W> {
    fn new(out: &'a mut W, more: bool) -> Self {
        Self {
            out,
            more,
            result: Ok(()),
        }
    }

    /// The member's name and colon; the value is the caller's to write.
    fn name(&mut self, field: &Field) -> fmt::Result {
        if self.more {
            self.out.write_char(',')?;
        }
        self.more = true;
        let name = field.name();
        string(self.out, name.strip_prefix("r#").unwrap_or(name))?;
        self.out.write_char(':')
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| value(self.out));
        }
    }
}

impl<W: fmt::Write> Visit for MemberWriter<'_, W> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| string(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    /// JSON has no NaN or infinity: those are written as strings.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |out| {
            if value.is_finite() {
                write!(out, "{value}")
            } else {
                write!(out, "\"{value}\"")
            }
        });
    }
}

/// `s` as a JSON string, quotes included.
fn string(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(s)?;
    out.write_char('"')
}

/// Writes what it is given escaped for the inside of a JSON string: the
/// quote, the backslash and the control characters, as serde_json does.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            // Most bytes need nothing: one test each, the choice only when not.
            if b >= 0x20 && b != b'"' && b != b'\\' {
                continue;
            }
            // Every byte escaped is ASCII, so these are char boundaries.
            self.0.write_str(&s[start..i])?;
            match b {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                0x08 => self.0.write_str("\\b")?,
                0x0c => self.0.write_str("\\f")?,
                _ => write!(self.0, "\\u{b:04x}")?,
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn escaped_strings_read_back_as_written() {
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        for s in [
            "",
            "plain",
            "quote \" and backslash \\",
            "line\nfeed\r\ttab\u{8}\u{c}",
            &all_controls,
            "non-ASCII: é, 中文, 🙂, and DEL \u{7f}",
        ] {
            let mut out = String::new();
            string(&mut out, s).unwrap();
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s, "{out}");
            assert_eq!(
                out,
                serde_json::to_string(s).unwrap(),
                "as serde_json writes it"
            );
        }
    }

    /// The lines a subscriber with this format wrote.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Lines {
        fn parsed(&self) -> Vec<Value> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    fn logged(f: impl FnOnce()) -> Vec<Value> {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(Members)
            .event_format(Line)
            .with_writer(lines.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        lines.parsed()
    }

    #[test]
    fn a_line_has_the_event_fields_and_every_span_root_first() {
        let lines = logged(|| {
            let outer = tracing::info_span!(
                "request",
                rpc = "EndConference",
                r#type = 7u64,
                token = tracing::field::Empty,
            );
            let _outer = outer.enter();
            outer.record("token", "tok-1");
            let inner = tracing::info_span!("empty");
            let _inner = inner.enter();
            tracing::info!(
                code = ?tonic::Code::NotFound,
                latency_us = 12u64,
                ratio = 0.5,
                bad = f64::NAN,
                ok = true,
                cause = "a \"quoted\"\nline",
                "served {}",
                "once"
            );
        });
        let line = &lines[0];
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() == 27 && timestamp.ends_with('Z'),
            "RFC 3339 in microseconds, UTC: {timestamp}"
        );
        let mut line = line.clone();
        line.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(
            line,
            json!({
                "level": "INFO",
                "message": "served once",
                "code": "NotFound",
                "latency_us": 12,
                "ratio": 0.5,
                "bad": "NaN",
                "ok": true,
                "cause": "a \"quoted\"\nline",
                "target": module_path!(),
                "spans": [
                    {"rpc": "EndConference", "type": 7, "token": "tok-1", "name": "request"},
                    {"name": "empty"},
                ],
            })
        );
    }

    #[test]
    fn a_line_outside_any_span_has_no_spans() {
        let lines = logged(|| tracing::warn!("alone"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["message"], "alone");
        assert!(lines[0].get("spans").is_none(), "{}", lines[0]);
    }
}
