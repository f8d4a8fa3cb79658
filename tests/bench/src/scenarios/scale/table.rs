//! The scale scenario's own table: one row per case, beside the targets.

use std::collections::BTreeMap;

use super::key;
use crate::{output::number, results::Recorded};

/// Columns: figure name in the case's keys, heading.
const COLUMNS: [(&str, &str); 9] = [
    ("items", "items"),
    ("items_per_s", "items/s"),
    ("coordinator_cpu_s_per_1k_items", "cpu s/1k"),
    ("run_cpu_s_per_1k_items", "run cpu s/1k"),
    ("etcd_txns_per_item", "txn/item"),
    ("coordinator_rss_bytes_per_item", "B/item"),
    ("stop_p99_ms", "stop p99 ms"),
    ("stop_to_stopped_ms", "to STOPPED ms"),
    ("stop_all_ms", "StopAll ms"),
];

const TARGETS: &str = "targets: items/s and cpu s/1k within 20% across the cases; \
<= 1024 B/item at 100k; stop p99 not growing with size (misses are reported, never asserted)";

/// The table, or nothing when no case was measured.
pub fn table(recorded: &Recorded) -> String {
    let cases = cases(&recorded.figures);
    if cases.is_empty() {
        return String::new();
    }
    let mut rows =
        vec![std::iter::once("case").chain(COLUMNS.map(|c| c.1)).map(String::from).collect()];
    for case in &cases {
        let mut row = vec![case.clone()];
        for (name, _) in COLUMNS {
            let value = recorded.figures.get(&key(case, name));
            row.push(value.map_or_else(|| "n/a".to_string(), |v| number(*v)));
        }
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let sim_ms = recorded.figures.get("scale.sim_ms").copied().unwrap_or(0.0);
    let mut text =
        format!("\nscale (dispatch: {sim_ms} ms sim items; stop: immediate, every slot busy)\n");
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(
                |(c, (cell, w))| if c == 0 { format!("{cell:<w$}") } else { format!("{cell:>w$}") },
            )
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text.push_str(TARGETS);
    text.push('\n');
    text
}

/// The measured cases, smallest first: names `X` of the `scale.X.items` figures.
fn cases(figures: &BTreeMap<String, f64>) -> Vec<String> {
    let mut cases: Vec<(u64, String)> = figures
        .iter()
        .filter_map(|(key, value)| {
            let case = key.strip_prefix("scale.")?.strip_suffix(".items")?;
            Some((*value as u64, case.to_string()))
        })
        .collect();
    cases.sort();
    cases.into_iter().map(|(_, case)| case).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_case_ordered_by_items() {
        let mut recorded = Recorded::default();
        for (case, items, rate) in [("10k", 10_000.0, 2500.0), ("1k", 1_000.0, 2000.0)] {
            recorded.figures.insert(key(case, "items"), items);
            recorded.figures.insert(key(case, "items_per_s"), rate);
        }
        let text = table(&recorded);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].starts_with("case"), "{text}");
        assert!(lines[3].starts_with("1k ") && lines[3].contains("2000"), "{text}");
        assert!(lines[4].starts_with("10k") && lines[4].contains("n/a"), "{text}");
        assert!(lines[1].contains("dispatch: 0 ms sim items"), "{text}");
        assert!(table(&Recorded::default()).is_empty());
        recorded.figures.insert("scale.sim_ms".into(), 200.0);
        assert!(table(&recorded).contains("dispatch: 200 ms sim items"));
    }
}
