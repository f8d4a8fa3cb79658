//! The table on stdout and `results.json`.

use std::{fmt::Write as _, path::Path};

use anyhow::Context;
use serde_json::{Map, Value};

use crate::{
    catalog::{self, COMPARED, FIGURES, Target},
    results::{Recorded, Results},
    scenarios,
};

/// A number with as many decimals as its size deserves.
pub fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

fn target_text(target: Option<Target>) -> String {
    match target {
        Some(Target::AtLeast(goal)) => format!(">= {goal}"),
        Some(Target::AtMost(goal)) => format!("<= {goal}"),
        None => String::new(),
    }
}

fn verdict(target: Option<Target>, value: Option<f64>) -> &'static str {
    match (target, value) {
        (Some(target), Some(value)) if target.met_by(value) => "meets",
        (Some(_), Some(_)) => "MISSES",
        _ => "",
    }
}

/// A value with its unit; bytes of a MiB or more in MiB.
fn with_unit(value: f64, unit: &str) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if unit == "B" && value >= MIB {
        return format!("{:.1} MiB", value / MIB);
    }
    format!("{} {unit}", number(value))
}

/// One row: figure, value with unit, target, verdict.
fn row(key: &str, unit: &str, target: Option<Target>, value: Option<f64>) -> [String; 4] {
    let shown = value.map_or_else(|| "n/a".to_string(), |v| with_unit(v, unit));
    [
        key.to_string(),
        shown.trim_end().to_string(),
        target_text(target),
        verdict(target, value).into(),
    ]
}

/// The plain aligned table of every figure, then the details, notes and errors.
pub fn table(results: &Results) -> String {
    let recorded = results.snapshot();
    let mut rows = vec![["figure", "value", "target", ""].map(String::from)];
    for figure in FIGURES {
        let value = recorded.figures.get(figure.key).copied();
        rows.push(row(figure.key, figure.unit, figure.target, value));
    }
    let mut text = aligned(&rows);
    text.push_str(&comparison(&recorded));
    text.push_str(&scenarios::scale::table(&recorded));
    let compared: Vec<String> = COMPARED.iter().map(|key| catalog::insecure_key(key)).collect();
    let details: Vec<[String; 4]> = recorded
        .figures
        .iter()
        .filter(|(key, _)| {
            catalog::find(key).is_none() && !compared.contains(key) && !key.starts_with("scale.")
        })
        .map(|(key, value)| row(key, "", None, Some(*value)))
        .collect();
    if !details.is_empty() {
        text.push_str("\ndetails\n");
        text.push_str(&aligned(&details));
    }
    append_remarks(&mut text, &recorded);
    text
}

/// TLS beside `--insecure`: each [`COMPARED`] figure of both runs, when either was measured.
fn comparison(recorded: &Recorded) -> String {
    let mut rows = vec![["figure", "TLS", "--insecure", ""].map(String::from)];
    for key in COMPARED {
        let unit = catalog::find(key).map_or("", |figure| figure.unit);
        let shown = |key: &str| {
            let value = recorded.figures.get(key);
            value.map_or_else(|| "n/a".to_string(), |v| with_unit(*v, unit).trim_end().to_string())
        };
        let insecure = catalog::insecure_key(key);
        if recorded.figures.contains_key(*key) || recorded.figures.contains_key(&insecure) {
            rows.push([key.to_string(), shown(key), shown(&insecure), String::new()]);
        }
    }
    if rows.len() == 1 {
        return String::new();
    }
    let width = |column: usize| rows.iter().map(|row| row[column].chars().count()).max();
    let (w0, w1, w2) = (width(0).unwrap_or(0), width(1).unwrap_or(0), width(2).unwrap_or(0));
    let mut text = String::from("\nTLS on vs --insecure (same run, same sizes)\n");
    for [figure, tls, insecure, _] in &rows {
        let _ = writeln!(text, "{figure:<w0$}  {tls:>w1$}  {insecure:>w2$}");
    }
    text
}

fn append_remarks(text: &mut String, recorded: &Recorded) {
    if !recorded.notes.is_empty() {
        text.push_str("\nnotes\n");
        for (key, note) in &recorded.notes {
            let _ = writeln!(text, "  {key}: {note}");
        }
    }
    if !recorded.errors.is_empty() {
        text.push_str("\nscenarios that stopped early\n");
        for (scenario, error) in &recorded.errors {
            let _ = writeln!(text, "  {scenario}: {error}");
        }
    }
}

fn aligned(rows: &[[String; 4]]) -> String {
    let mut widths = [0usize; 4];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// The results as JSON: the run's facts, then one object per scenario (`dispatch`, `stop`,
/// ...) holding its figures (`null` when not measured), then `notes` and `errors`.
pub fn json(results: &Results) -> Value {
    let recorded = results.snapshot();
    let mut root = recorded.meta.clone();
    for figure in FIGURES {
        insert(&mut root, figure.key, Value::Null);
    }
    for (key, value) in &recorded.figures {
        insert(&mut root, key, json_number(*value));
    }
    root.insert("notes".into(), serde_json::json!(recorded.notes));
    root.insert("errors".into(), serde_json::json!(recorded.errors));
    Value::Object(root)
}

/// Whole numbers as JSON integers (`10000`, not `10000.0`).
fn json_number(value: f64) -> Value {
    let whole = value == value.trunc() && value.abs() < 9.0e15;
    if whole { serde_json::json!(value as i64) } else { serde_json::json!(value) }
}

fn insert(root: &mut Map<String, Value>, key: &str, value: Value) {
    let (group, name) = key.split_once('.').unwrap_or(("other", key));
    let entry = root.entry(group).or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(map) = entry {
        map.insert(name.to_string(), value);
    }
}

/// Writes [`json`] to `path`, creating its directory.
pub fn write_json(results: &Results, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&json(results))?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}
