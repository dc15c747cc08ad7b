//! raft-rs logs through `slog`; this drain re-emits its records as `tracing`
//! events under the target `raft`, with the record's key-values appended to
//! the message (`became leader at term 3 term=3 raft_id=1`). slog filters
//! statically first: release builds never see raft-rs's debug records.

use std::fmt::{self, Write as _};

use slog::{Drain, Level, Never, OwnedKVList, Record, KV};
use tracing::Level as TLevel;

/// The `slog::Drain` handed to raft-rs.
pub(crate) struct TracingDrain;

/// A logger for one raft node, feeding `tracing`.
pub(crate) fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        // Writing into a String cannot fail.
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

fn kv_text(record: &Record<'_>, values: &OwnedKVList) -> String {
    let mut kv = KvText(String::new());
    // Serializing into a String only fails if a value's Debug/Display does.
    let _ = record.kv().serialize(record, &mut kv);
    let _ = values.serialize(record, &mut kv);
    kv.0
}

macro_rules! emit {
    ($level:expr, $record:expr, $values:expr) => {
        if tracing::enabled!(target: "raft", $level) {
            let kv = kv_text($record, $values);
            tracing::event!(target: "raft", $level, "{}{}", $record.msg(), kv);
        }
    };
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), Never> {
        match record.level() {
            Level::Critical | Level::Error => emit!(TLevel::ERROR, record, values),
            Level::Warning => emit!(TLevel::WARN, record, values),
            Level::Info => emit!(TLevel::INFO, record, values),
            Level::Debug => emit!(TLevel::DEBUG, record, values),
            Level::Trace => emit!(TLevel::TRACE, record, values),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record as SpanRecord};
    use tracing::{Event, Metadata, Subscriber};

    /// Records (target, level, message) of every event.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(String, tracing::Level, String)>>>);

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &SpanRecord<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut m = Message(String::new());
            event.record(&mut m);
            let meta = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push((meta.target().to_string(), *meta.level(), m.0));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn slog_records_become_tracing_events() {
        let recorder = Recorder::default();
        tracing::subscriber::with_default(recorder.clone(), || {
            let logger = super::raft_logger().new(slog::o!("raft_id" => 7));
            slog::info!(logger, "became leader at term {term}", term = 3; "lead" => 7);
            slog::warn!(logger, "careful");
            slog::error!(logger, "broken");
        });
        let events = recorder.0.lock().unwrap().clone();
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(events.iter().all(|(target, _, _)| target == "raft"));
        assert_eq!(events[0].1, tracing::Level::INFO);
        assert!(
            events[0].2.starts_with("became leader at term 3"),
            "{}",
            events[0].2
        );
        assert!(events[0].2.contains("lead=7") && events[0].2.contains("raft_id=7"));
        assert_eq!(events[1].1, tracing::Level::WARN);
        assert_eq!(events[2].1, tracing::Level::ERROR);
    }
}
