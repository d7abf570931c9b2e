//! Event records on stdout, one JSON line per decision, flushed at once so `moat-audit
//! append` sees each as it happens. A decision is recorded before its answer is sent; if
//! stdout fails, the filter stops rather than act without a record.

use serde_json::{Map, Value};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

pub struct Events {
    out: Mutex<Box<dyn Write + Send>>,
    failed: AtomicBool,
    pub on_failure: Notify,
}

impl Events {
    pub fn stdout() -> Self {
        Events {
            out: Mutex::new(Box::new(std::io::stdout())),
            failed: AtomicBool::new(false),
            on_failure: Notify::new(),
        }
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Write one record; false (and the filter begins to stop) when it could not be written.
    pub fn emit(&self, kind: &str, mut fields: Map<String, Value>) -> bool {
        if self.failed() {
            return false;
        }
        fields.insert("ts".into(), Value::from(moat_core::timefmt::now_rfc3339()));
        let ok = match moat_core::jsonl::line(kind, &Value::Object(fields)) {
            Ok(line) => {
                let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
                out.write_all(line.as_bytes())
                    .and_then(|_| out.flush())
                    .is_ok()
            }
            Err(_) => false,
        };
        if !ok {
            self.failed.store(true, Ordering::SeqCst);
            self.on_failure.notify_one();
        }
        ok
    }
}

/// Build a record body: `fields!{"k" => v, ...}` with `None` values left out.
#[macro_export]
macro_rules! fields {
    ($($k:literal => $v:expr),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $(
            let v = serde_json::to_value($v).unwrap_or(serde_json::Value::Null);
            if !v.is_null() {
                m.insert($k.to_string(), v);
            }
        )*
        m
    }};
}
