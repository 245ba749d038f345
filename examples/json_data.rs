//! The publish cost of passing JSON data through as written (a `RawValue` checked by serde_json,
//! then [`herald::json::data_text`]) against parsing it into a `serde_json::Value` and writing
//! that out again (what Herald did before, losing key order and number digits). Times the
//! decoding of a whole publish body, `{"id": ..., "data": ...}`, for data of several shapes.
//!
//!     cargo run --release --example json_data

use serde::Deserialize;
use serde_json::value::RawValue;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[derive(Deserialize)]
struct Reserialised {
    #[allow(dead_code)]
    id: Option<serde_json::Value>,
    data: serde_json::Value,
}

#[derive(Deserialize)]
struct PassedThrough {
    #[allow(dead_code)]
    id: Option<Box<RawValue>>,
    data: Box<RawValue>,
}

fn reserialise(body: &str) -> String {
    let input: Reserialised = serde_json::from_str(body).unwrap();
    match input.data {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn pass_through(body: &str) -> String {
    let input: PassedThrough = serde_json::from_str(body).unwrap();
    herald::json::data_text(input.data.get())
}

/// Nanoseconds per call of `f` on `body`, the best of five runs of at least 200 ms.
fn time(body: &str, f: fn(&str) -> String) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            for _ in 0..64 {
                black_box(f(black_box(body)));
            }
            n += 64;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn main() {
    let object = r#"{"order": 42, "status": "shipped", "amount": 129.90, "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}], "note": "leave at the door"}"#;
    let numbers: String = format!("[{}]", (0..200).map(|i| format!("{}.{:04}", i * 7919, i)).collect::<Vec<_>>().join(", "));
    let large: String = format!(
        "[{}]",
        (0..400)
            .map(|i| format!(r#"{{"id": {i}, "name": "item number {i}", "tags": ["a", "b"], "ok": true}}"#))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let string = format!("\"{}\"", "x".repeat(1000));
    let cases = [
        ("string, 20 B", "\"order 42 has shipped\"".to_owned()),
        ("string, 1 KB", string),
        ("object, 150 B", object.to_owned()),
        ("200 decimals, 2 KB", numbers),
        ("400 objects, 24 KB", large),
    ];
    println!("| data | bytes | parse and re-serialise | passed through | ratio |");
    println!("|---|---|---|---|---|");
    for (name, data) in &cases {
        let body = format!(r#"{{"id": "e-1", "data": {data}}}"#);
        assert!(pass_through(&body).len() <= data.len());
        let old = time(&body, reserialise);
        let new = time(&body, pass_through);
        println!("| {name} | {} | {:.0} ns | {:.0} ns | {:.2}x |", body.len(), old, new, old / new);
    }
}
