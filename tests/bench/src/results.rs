//! The figures of a run, recorded as scenarios go, so a scenario that fails or runs out of
//! time still leaves what it measured.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use serde_json::Value;

/// Shared, cloneable store of figures, notes and errors.
#[derive(Clone)]
pub struct Results {
    inner: Arc<Mutex<Recorded>>,
    /// Keys starting with `.0` are recorded as starting with `.1` (a scenario run again
    /// under other conditions keeps its code and gets keys of its own).
    rename: Option<(&'static str, String)>,
}

/// Everything recorded so far.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Facts about the run (cores, git revision, mode, duration).
    pub meta: serde_json::Map<String, Value>,
    /// Figures by dotted key, e.g. `dispatch.items_per_s`.
    pub figures: BTreeMap<String, f64>,
    /// Remarks on figures (partial, not available) by dotted key.
    pub notes: BTreeMap<String, String>,
    /// Why a scenario did not finish, by scenario name.
    pub errors: BTreeMap<String, String>,
}

impl Results {
    /// A store holding `meta` (a JSON object) as the run's facts.
    pub fn new(meta: Value) -> Results {
        let meta = match meta {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let recorded = Recorded { meta, ..Recorded::default() };
        Results { inner: Arc::new(Mutex::new(recorded)), rename: None }
    }

    /// The same store, recording the keys of scenario `from` under scenario `to`
    /// (`dispatch.items_per_s` as `dispatch_insecure.items_per_s`).
    pub fn renamed(&self, from: &'static str, to: &str) -> Results {
        Results { inner: self.inner.clone(), rename: Some((from, to.to_string())) }
    }

    fn key(&self, key: &str) -> String {
        match &self.rename {
            Some((from, to)) => {
                match key.strip_prefix(from).and_then(|rest| rest.strip_prefix('.')) {
                    Some(rest) => format!("{to}.{rest}"),
                    None => key.to_string(),
                }
            }
            None => key.to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a figure and prints it as it comes; a value that is not finite is a note.
    pub fn set(&self, key: &str, value: f64) {
        let key = &self.key(key);
        if !value.is_finite() {
            self.note(key, &format!("not measurable ({value})"));
            return;
        }
        println!("  {key} = {}", crate::output::number(value));
        self.lock().figures.insert(key.to_string(), value);
    }

    /// Attaches a remark to a figure.
    pub fn note(&self, key: &str, text: &str) {
        let key = &self.key(key);
        println!("  {key}: {text}");
        let mut recorded = self.lock();
        let entry = recorded.notes.entry(key.to_string()).or_default();
        if !entry.is_empty() {
            entry.push_str("; ");
        }
        entry.push_str(text);
    }

    /// Records why a scenario stopped early.
    pub fn error(&self, scenario: &str, text: &str) {
        eprintln!("  {scenario}: {text}");
        self.lock().errors.insert(scenario.to_string(), text.to_string());
    }

    /// Records a fact about the run.
    pub fn set_meta(&self, key: &str, value: Value) {
        self.lock().meta.insert(key.to_string(), value);
    }

    /// A copy of everything recorded.
    pub fn snapshot(&self) -> Recorded {
        self.lock().clone()
    }
}
