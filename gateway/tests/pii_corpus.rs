//! Precision and recall of the PII detectors on the labelled corpus in
//! `tests/fixtures/pii/corpus.jsonl` (positives and near misses; see its README). Prints a table
//! per detector kind and fails below the thresholds set here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::collections::BTreeMap;

use lattice_gateway::content::pii::{Scanner, builtins};

/// (recall, precision) floors. The structured kinds have checksums or fixed shapes; phones and
/// unlabelled secrets are judged by shape alone.
fn floor(kind: &str) -> (f64, f64) {
    match kind {
        "phone" | "secret" => (0.95, 0.95),
        _ => (0.98, 0.95),
    }
}

#[derive(Default)]
struct Tally {
    tp: u32,
    fp: u32,
    fn_: u32,
}

#[test]
fn detectors_meet_their_precision_and_recall_on_the_corpus() {
    measure("corpus.jsonl", 300);
}

/// The held-out set: written independently of the detectors and never used to tune them.
#[test]
fn detectors_meet_their_precision_and_recall_on_the_held_out_set() {
    measure("holdout.jsonl", 200);
}

fn measure(file: &str, at_least: usize) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/pii")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let scanner = Scanner::new(builtins()).unwrap();
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let (mut positives, mut negatives) = (0, 0);
    let mut misses = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let snippet = v["text"].as_str().unwrap();
        let mut want: Vec<(String, String)> = v["pii"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["kind"].as_str().unwrap().to_string(),
                    p["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if want.is_empty() {
            negatives += 1;
        } else {
            positives += 1;
        }
        let mut got = Vec::new();
        scanner.scan(snippet, |h| {
            got.push((
                scanner.detectors()[h.detector].kind.to_string(),
                snippet[h.span].to_string(),
            ))
        });
        for g in got {
            match want.iter().position(|w| *w == g) {
                Some(i) => {
                    want.swap_remove(i);
                    tally.entry(g.0).or_default().tp += 1;
                }
                None => {
                    misses.push(format!("false {}: {:?} in {:?}", g.0, g.1, snippet));
                    tally.entry(g.0).or_default().fp += 1;
                }
            }
        }
        for w in want {
            misses.push(format!("missed {}: {:?} in {:?}", w.0, w.1, snippet));
            tally.entry(w.0).or_default().fn_ += 1;
        }
    }
    assert!(
        positives >= at_least && negatives >= at_least,
        "{positives} positives, {negatives} negatives"
    );
    println!("{file}: {positives} positive and {negatives} negative snippets");
    println!(
        "{:<8} {:>5} {:>5} {:>5} {:>9} {:>6}",
        "kind", "tp", "fp", "fn", "precision", "recall"
    );
    let mut failed = Vec::new();
    for (kind, t) in &tally {
        let precision = f64::from(t.tp) / f64::from((t.tp + t.fp).max(1));
        let recall = f64::from(t.tp) / f64::from((t.tp + t.fn_).max(1));
        println!(
            "{kind:<8} {:>5} {:>5} {:>5} {precision:>9.3} {recall:>6.3}",
            t.tp, t.fp, t.fn_
        );
        let (r, p) = floor(kind);
        if recall < r || precision < p {
            failed.push(format!(
                "{kind}: precision {precision:.3} (floor {p}), recall {recall:.3} (floor {r})"
            ));
        }
    }
    for m in &misses {
        println!("{m}");
    }
    assert!(failed.is_empty(), "below the floor: {failed:?}");
}
