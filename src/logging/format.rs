//! What a log line costs to format: the same line as tracing-subscriber's default format, with
//! less work where the server writes one for every request.
//!
//! The default format spent about 14k instructions on a request's span and its `request done`
//! line (callgrind, W1), a twelfth of a profile read. Most went to `core::fmt` plumbing that a
//! line without colours does not need: every name, `=`, `{`, `:` and target went through a
//! style that, without colours, writes nothing, each by a formatting call of its own.
//!
//! - [`Lines`] writes each event's line (time, level, spans, target, fields) itself.
//! - [`Fields`] writes `name=value` for each field of a span or an event itself; messages and
//!   errors it leaves to the default, which escapes what they hold.
//! - [`Clock`] writes the time as the default does (RFC 3339, UTC, microseconds), the date and
//!   the second formatted once a second on each thread rather than field by field every line.
//!
//! On a terminal, where lines have colours, each formats as the default does throughout.
//! Tests hold each to the default's output.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Each event's line as tracing-subscriber's default `Full` format writes it with [`Clock`]'s
/// time; give it to `tracing_subscriber::fmt().event_format(…)`.
#[derive(Debug)]
pub struct Lines {
    /// The default, which writes lines with colours.
    coloured: Format<Full, Clock>,
}

impl Lines {
    pub fn new() -> Self {
        Lines {
            coloured: Format::default().with_timer(Clock),
        }
    }
}

impl Default for Lines {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return self.coloured.format_event(ctx, writer, event);
        }
        // A `log` record's own target and level, as the default shows them.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if Clock.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// The fields of spans and events, formatted as tracing-subscriber's `DefaultFields` formats
/// them; give it to `tracing_subscriber::fmt().fmt_fields(…)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fields;

impl<'a> MakeVisitor<Writer<'a>> for Fields {
    type Visitor = FieldsVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> FieldsVisitor<'a> {
        FieldsVisitor {
            writer,
            empty: true,
            result: Ok(()),
        }
    }
}

/// [`Fields`]' visitor of one span's or event's fields.
#[derive(Debug)]
pub struct FieldsVisitor<'a> {
    writer: Writer<'a>,
    /// No field has been written yet: the next is not preceded by a space.
    empty: bool,
    result: fmt::Result,
}

impl FieldsVisitor<'_> {
    /// Whether `field` is written here rather than by the default's visitor: a field that is
    /// neither the message nor metadata of a `log` record, on a line without colours.
    fn writes(&self, field: &Field) -> bool {
        let name = field.name();
        !self.writer.has_ansi_escapes() && name != "message" && !name.starts_with("log.")
    }

    /// `name=` and then what `value` writes, after a space unless it is the first field.
    fn write(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        let writer = &mut self.writer;
        let space = if std::mem::take(&mut self.empty) { "" } else { " " };
        self.result = writer
            .write_str(space)
            .and_then(|()| writer.write_str(name))
            .and_then(|()| writer.write_char('='))
            .and_then(|()| value(writer));
    }

    /// Records `field`: here as `name=` and what `value` writes when [`Self::writes`] it,
    /// otherwise by the default's visitor, which `default` gives it.
    fn record(
        &mut self,
        field: &Field,
        value: impl FnOnce(&mut Writer<'_>) -> fmt::Result,
        default: impl FnOnce(&mut DefaultVisitor<'_>),
    ) {
        match self.writes(field) {
            true => self.write(field, value),
            false => self.delegate(field, default),
        }
    }

    /// Lets the default's visitor record `field`, which `record` gives it, after the fields
    /// before.
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut default = DefaultVisitor::new(self.writer.by_ref(), self.empty);
        record(&mut default);
        self.result = default.finish();
        // The default writes every field but the metadata of `log` records, which it skips.
        self.empty &= field.name().starts_with("log.");
    }
}

impl Visit for FieldsVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(
            field,
            |writer| write!(writer, "{value:?}"),
            |default| default.record_debug(field, value),
        );
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(
            field,
            |writer| write!(writer, "{value:?}"),
            |default| default.record_str(field, value),
        );
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(
            field,
            |writer| write!(writer, "{value}"),
            |default| default.record_u64(field, value),
        );
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(
            field,
            |writer| write!(writer, "{value}"),
            |default| default.record_i64(field, value),
        );
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(
            field,
            |writer| writer.write_str(if value { "true" } else { "false" }),
            |default| default.record_bool(field, value),
        );
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // Errors are escaped and list their sources: the default's work throughout.
        self.delegate(field, |default| default.record_error(field, value));
    }
}

impl VisitOutput<fmt::Result> for FieldsVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for FieldsVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// The time as tracing-subscriber's default timer writes it (`2026-12-03T08:30:12.345678Z`);
/// give it to `tracing_subscriber::fmt().with_timer(…)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Clock;

thread_local! {
    /// The second this thread last wrote, and its text up to the second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for Clock {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since_epoch) => write_time(since_epoch, writer),
            // A clock set before 1970: the default knows how to write that.
            Err(_) => tracing_subscriber::fmt::time::SystemTime.format_time(writer),
        }
    }
}

/// Writes the time `since_epoch` after the Unix epoch.
fn write_time(since_epoch: Duration, writer: &mut impl Write) -> fmt::Result {
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != since_epoch.as_secs() {
            let at = i64::try_from(since_epoch.as_secs())
                .ok()
                .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
                .ok_or(fmt::Error)?;
            text.clear();
            write!(text, "{}", at.format("%Y-%m-%dT%H:%M:%S"))?;
            *second = since_epoch.as_secs();
        }
        writer.write_str(text)
    })?;
    let mut fraction = *b".000000Z";
    let mut micros = since_epoch.subsec_micros();
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    writer.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use chrono::SecondsFormat;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A writer that keeps what it is given, for the test to read.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Kept {
        type Writer = Kept;

        fn make_writer(&'a self) -> Kept {
            self.clone()
        }
    }

    impl Kept {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the outer \x1b[31mfailure\x1b[0m")]
    struct Outer(#[source] std::io::Error);

    /// Logs one of every kind of field, in spans and events, with and without a message.
    fn events() {
        let span =
            tracing::info_span!("request", request_id = %uuid::Uuid::nil(), method = %"POST", path = %"/graphql");
        let _entered = span.enter();
        tracing::info!(status = 200u16, elapsed_ms = 3u64, "request done");
        tracing::info!(
            delta = -4i64,
            ok = true,
            ratio = 0.5f64,
            name = "quoted \"text\"",
            "a message\x1b[2J with escapes"
        );
        tracing::warn!(r#type = "raw", list = ?vec![1, 2], shown = %"shown");
        let error = Outer(std::io::Error::other("the inner cause"));
        tracing::error!(error = &error as &(dyn std::error::Error + 'static), "failed");
        let later = tracing::info_span!("later", recorded = tracing::field::Empty, first = 1u64);
        later.record("recorded", "now");
        later.in_scope(|| tracing::info!(message = "given as a field", after = 2u64));
        tracing::info!(log.target = "skipped", kept = 1u64);
        tracing::info!("");
    }

    /// What `events` logs: through the default's fields, or [`Fields`]; and through the
    /// default's line without a time, or [`Lines`] with the time cut off each line.
    fn logged(ansi: bool, fields: bool, lines: bool) -> String {
        let kept = Kept::default();
        let builder = tracing_subscriber::fmt().with_writer(kept.clone()).with_ansi(ansi);
        let events = || {
            events();
            // A record of the `log` crate, which the default shows with the record's target.
            let record = log::Record::builder()
                .args(format_args!("from log"))
                .level(log::Level::Warn)
                .target("a_log_target")
                .build();
            tracing_log::format_trace(&record).unwrap();
        };
        match (fields, lines) {
            (false, false) => tracing::subscriber::with_default(builder.without_time().finish(), events),
            (true, false) => {
                tracing::subscriber::with_default(builder.without_time().fmt_fields(Fields).finish(), events)
            }
            (false, true) => tracing::subscriber::with_default(builder.event_format(Lines::new()).finish(), events),
            (true, true) => tracing::subscriber::with_default(
                builder.event_format(Lines::new()).fmt_fields(Fields).finish(),
                events,
            ),
        }
        let text = kept.text();
        if !lines {
            return text;
        }
        // Each line begins with the time and a space, dimmed on a terminal.
        let (open, close) = if ansi { ("\x1b[2m", "\x1b[0m") } else { ("", "") };
        let time = open.len() + "2026-12-03T08:30:12.345678Z".len() + close.len() + 1;
        text.lines()
            .map(|line| {
                let (stamp, rest) = line.split_at(time);
                assert!(
                    stamp.starts_with(open) && stamp.ends_with(&format!("Z{close} ")),
                    "{line}"
                );
                format!("{rest}\n")
            })
            .collect()
    }

    #[test]
    fn fields_and_lines_format_every_kind_of_field_and_event_as_the_default_does() {
        let default = logged(false, false, false);
        assert!(
            default.contains("request_id=00000000-0000-0000-0000-000000000000"),
            "{default}"
        );
        assert!(default.contains("\\x1b[2J"), "messages are escaped: {default}");
        assert!(default.contains(" WARN a_log_target: from log"), "{default}");
        assert!(default.contains("ERROR "), "{default}");
        assert_eq!(logged(false, true, false), default);
        assert_eq!(logged(false, false, true), default);
        assert_eq!(logged(false, true, true), default);
    }

    #[test]
    fn fields_and_lines_on_a_terminal_format_with_the_default_colours() {
        let default = logged(true, false, false);
        assert!(default.contains('\x1b'), "{default}");
        assert_eq!(logged(true, true, false), default);
        assert_eq!(logged(true, false, true), default);
        assert_eq!(logged(true, true, true), default);
    }

    #[test]
    fn the_clock_writes_what_chrono_writes_for_rfc_3339_in_microseconds() {
        // Twice in one second and then in others, so that the cached second is used and
        // replaced; and the edges of a second and of the epoch.
        let instants = [
            Duration::new(1_764_750_612, 345_678_901),
            Duration::new(1_764_750_612, 999_999_999),
            Duration::new(1_764_750_613, 0),
            Duration::new(0, 1_000),
            Duration::new(253_402_300_799, 999_999_000),
            Duration::new(1_764_750_612, 5_000),
        ];
        for since_epoch in instants {
            let mut text = String::new();
            write_time(since_epoch, &mut text).unwrap();
            let at =
                chrono::DateTime::from_timestamp(since_epoch.as_secs() as i64, since_epoch.subsec_nanos()).unwrap();
            assert_eq!(text, at.to_rfc3339_opts(SecondsFormat::Micros, true));
        }
    }

    #[test]
    fn the_clock_writes_the_time_as_the_default_timer_does() {
        let mut ours = String::new();
        Clock.format_time(&mut Writer::new(&mut ours)).unwrap();
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours} against {theirs}");
        let ours = chrono::DateTime::parse_from_rfc3339(&ours).unwrap();
        let theirs = chrono::DateTime::parse_from_rfc3339(&theirs).unwrap();
        assert!((theirs - ours).num_seconds().abs() <= 1);
    }
}
