//! Golden translations: every input under `tests/golden/` (written from the providers' API
//! references) translated to the other dialect and compared with the expected file beside it,
//! `<case>.<from>-to-<to>.<ext>`. Streams are also fed split at every byte, and must come out the
//! same. `UPDATE_GOLDEN=1` rewrites the expected files (review the diff before committing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use lattice_providers::Dialect;
use lattice_providers::stream::Transcoder;
use lattice_providers::translate::{self, Rules, TranslateError};
use serde_json::{Value, json};

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(sub)
}

fn dialect(name: &str) -> Option<Dialect> {
    match name {
        "openai" => Some(Dialect::OpenAi),
        "anthropic" => Some(Dialect::Anthropic),
        "gemini" => Some(Dialect::Gemini),
        "ollama" => Some(Dialect::Ollama),
        _ => None,
    }
}

/// Every dialect but `d`: each input is translated to each of them.
fn others(d: Dialect) -> impl Iterator<Item = Dialect> {
    Dialect::ALL.into_iter().filter(move |o| *o != d)
}

/// The model a translation to `to` calls.
fn model_of(to: Dialect) -> &'static str {
    match to {
        Dialect::OpenAi => "gpt-4o",
        Dialect::Anthropic => "claude-sonnet-4-20250514",
        Dialect::Gemini => "gemini-2.5-flash",
        Dialect::Ollama => "llama3.2",
    }
}

/// A stream's file extension in `d`: server-sent events, or NDJSON for Ollama.
fn stream_ext(d: Dialect) -> &'static str {
    match d {
        Dialect::Ollama => "ndjson",
        _ => "sse",
    }
}

/// The inputs of a directory: (case, dialect, path), expected files excluded.
fn inputs(sub: &str, exts: &[&str]) -> Vec<(String, Dialect, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir(sub)).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = exts.iter().find_map(|ext| name.strip_suffix(&format!(".{ext}"))) else {
            continue;
        };
        let Some((case, d)) = stem.rsplit_once('.') else {
            continue;
        };
        if d.contains("-to-") {
            continue;
        }
        let d = dialect(d).unwrap_or_else(|| panic!("{name}: unknown dialect"));
        out.push((case.to_string(), d, e.path()));
    }
    out.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
    assert!(!out.is_empty(), "no inputs in {sub}");
    out
}

fn expected_path(sub: &str, case: &str, from: Dialect, to: Dialect, ext: &str) -> PathBuf {
    dir(sub).join(format!("{case}.{}-to-{}.{ext}", from.as_str(), to.as_str()))
}

/// Compares `got` with the expected file (or writes it under `UPDATE_GOLDEN=1`).
fn check(path: &Path, got: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run with UPDATE_GOLDEN=1 and review it",
            path.display()
        )
    });
    assert_eq!(got, want, "{} differs", path.display());
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

/// `created` (OpenAI) and `created_at` (Ollama) are the translation's clock; everything else
/// must be exact.
fn without_clock(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        if o.contains_key("created") {
            o.insert("created".into(), json!(0));
        }
        if o.contains_key("created_at") {
            o.insert("created_at".into(), json!("1970-01-01T00:00:00Z"));
        }
    }
    v
}

#[test]
fn requests_translate_as_the_golden_files_say() {
    for (case, from, path) in inputs("requests", &["json"]) {
        let body = std::fs::read(&path).unwrap();
        for to in others(from) {
            // Gemini says in its URL whether a call streams.
            let stream = case.starts_with("stream");
            let got = match translate::request(from, to, &body, model_of(to), stream, &Rules::default()) {
                Ok(t) => {
                    let body: Value = serde_json::from_slice(&t.body).unwrap();
                    json!({"body": body, "dropped": t.dropped})
                }
                Err(TranslateError::Refused(losses)) => {
                    json!({"refused": losses.iter().map(|l| json!({"field": l.field, "note": l.note})).collect::<Vec<_>>()})
                }
                Err(TranslateError::Invalid(e)) => json!({"invalid": e.0}),
            };
            check(&expected_path("requests", &case, from, to, "json"), &pretty(&got));
        }
    }
}

#[test]
fn answers_translate_as_the_golden_files_say() {
    for (case, from, path) in inputs("responses", &["json"]) {
        let body = std::fs::read(&path).unwrap();
        for to in others(from) {
            let got = match translate::response(from, to, &body) {
                Ok(b) => without_clock(serde_json::from_slice(&b).unwrap()),
                Err(e) => json!({"invalid": e.0}),
            };
            check(
                &expected_path("responses", &case, from, to, "json"),
                &pretty(&got),
            );
        }
    }
}

#[test]
fn errors_translate_as_the_golden_files_say() {
    for (case, from, path) in inputs("errors", &["json"]) {
        let input: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let status = input["status"].as_u64().unwrap() as u16;
        let body = serde_json::to_vec(&input["body"]).unwrap();
        for to in others(from) {
            let (status, out) = translate::error(from, to, status, &body);
            let got = json!({"status": status, "body": serde_json::from_slice::<Value>(&out).unwrap()});
            check(&expected_path("errors", &case, from, to, "json"), &pretty(&got));
        }
    }
}

/// Transcodes `input` fed in the given pieces; the output with the clock zeroed.
fn transcode(from: Dialect, to: Dialect, pieces: &[&[u8]]) -> String {
    let mut t = Transcoder::new(from, to, true);
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(&t.feed(p));
    }
    out.extend_from_slice(&t.finish());
    let text = String::from_utf8(out).unwrap();
    // Zero the clock in every OpenAI chunk and Ollama line.
    text.lines()
        .map(|l| match l.strip_prefix("data: ") {
            Some(d) if d.starts_with('{') => {
                format!("data: {}", without_clock(serde_json::from_str(d).unwrap()))
            }
            _ if l.starts_with('{') => without_clock(serde_json::from_str(l).unwrap()).to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn streams_transcode_as_the_golden_files_say_however_the_reads_fall() {
    for (case, from, path) in inputs("streams", &["sse", "ndjson"]) {
        let input = std::fs::read(&path).unwrap();
        for to in others(from) {
            let whole = transcode(from, to, &[&input]);
            check(&expected_path("streams", &case, from, to, stream_ext(to)), &whole);
            for cut in 1..input.len() {
                let (a, b) = input.split_at(cut);
                assert_eq!(
                    transcode(from, to, &[a, b]),
                    whole,
                    "{case}.{}: split at byte {cut}",
                    from.as_str()
                );
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(transcode(from, to, &bytes), whole, "{case}: one byte per read");
        }
    }
}

#[test]
fn a_stream_cut_mid_event_ends_with_an_error_event_in_the_clients_dialect() {
    let input = std::fs::read(dir("streams").join("tool_calls.anthropic.sse")).unwrap();
    let cut = &input[..input.len() / 2];
    let out = transcode(Dialect::Anthropic, Dialect::OpenAi, &[cut]);
    let last = out.lines().rfind(|l| l.starts_with("data: ")).unwrap();
    let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ended in the middle of an event"),
        "{out}"
    );
    assert!(
        !out.contains("[DONE]"),
        "a cut stream must not look complete: {out}"
    );

    let input = std::fs::read(dir("streams").join("tool_calls.openai.sse")).unwrap();
    let out = transcode(Dialect::OpenAi, Dialect::Anthropic, &[&input[..input.len() / 2]]);
    assert!(out.contains("event: error\n"), "{out}");
    assert!(!out.contains("message_stop"), "{out}");
}

#[test]
fn an_unknown_event_ends_the_stream_with_an_error_not_silently() {
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"m\",\"usage\":{\"input_tokens\":1}}}\n\n\
                  event: surprise\ndata: {\"type\":\"surprise\"}\n\n\
                  event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let out = transcode(Dialect::Anthropic, Dialect::OpenAi, &[stream.as_bytes()]);
    assert!(out.contains("\"error\""), "{out}");
    assert!(out.contains("surprise"), "{out}");
    assert!(!out.contains("[DONE]"), "{out}");
    let stream = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: not json\n\n";
    let out = transcode(Dialect::OpenAi, Dialect::Anthropic, &[stream.as_bytes()]);
    assert!(out.contains("event: error\n"), "{out}");
    assert!(
        out.contains("text_delta"),
        "what came before the fault is still sent: {out}"
    );
}

#[test]
fn an_upstream_error_event_keeps_its_kind() {
    let input = std::fs::read(dir("streams").join("error_overloaded.anthropic.sse")).unwrap();
    let out = transcode(Dialect::Anthropic, Dialect::OpenAi, &[&input]);
    let last = out.lines().rfind(|l| l.starts_with("data: ")).unwrap();
    let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "service_unavailable", "{out}");
    assert_eq!(v["error"]["message"], "Overloaded");
}

/// `docs/translation.md`'s matrices (one table per client dialect, a column per upstream,
/// headed `client → upstream`) name golden cases; each must exist in its cell's direction, a
/// `refused` cell must name refusals and no other cell may, and every golden case must be named
/// by a cell.
#[test]
fn translation_matrix_names_only_golden_cases_that_exist() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/translation.md"))
        .unwrap();
    let mut named = std::collections::BTreeSet::new();
    let mut tables = 0;
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        if !line.starts_with("| feature |") {
            continue;
        }
        tables += 1;
        let columns: Vec<(Dialect, Dialect)> = line
            .trim_matches('|')
            .split(" | ")
            .skip(1)
            .map(|h| {
                let (c, u) = h
                    .trim()
                    .split_once(" → ")
                    .unwrap_or_else(|| panic!("{line}: a column is `client → upstream`"));
                (dialect(c).unwrap(), dialect(u).unwrap())
            })
            .collect();
        lines.next(); // the separator
        let mut rows = 0;
        while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
            rows += 1;
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), columns.len() + 1, "{row}");
            for (i, (client, upstream)) in columns.iter().enumerate() {
                let cell = cells[i + 1];
                let refs: Vec<&str> = match (cell.find('['), cell.rfind(']')) {
                    (Some(a), Some(b)) => cell[a + 1..b].split(", ").collect(),
                    _ => Vec::new(),
                };
                let kind = cell.split([' ', ',']).next().unwrap_or("");
                assert!(
                    ["exact", "approximated", "dropped", "refused", "invalid", "-"].contains(&kind),
                    "{row}: a cell says exact, approximated, dropped, refused, invalid or -"
                );
                for r in refs {
                    let (sub, case) = r.split_once('/').unwrap_or_else(|| panic!("{row}: {r}"));
                    let (from, to, ext) = match sub {
                        "requests" => (client, upstream, "json"),
                        "responses" | "errors" => (upstream, client, "json"),
                        "streams" => (upstream, client, stream_ext(*client)),
                        _ => panic!("{row}: unknown golden directory {sub}"),
                    };
                    let path = expected_path(sub, case, *from, *to, ext);
                    let text = std::fs::read_to_string(&path)
                        .unwrap_or_else(|_| panic!("{row}: names {}, which does not exist", path.display()));
                    assert_eq!(
                        kind == "refused",
                        text.contains("\"refused\""),
                        "{row}: {} disagrees",
                        path.display()
                    );
                    assert_eq!(
                        kind == "invalid",
                        text.contains("\"invalid\""),
                        "{row}: {} disagrees",
                        path.display()
                    );
                    named.insert(path);
                }
            }
        }
        assert!(rows > 10, "a matrix has rows: {rows}");
    }
    assert_eq!(tables, 4, "one matrix per client dialect");
    for sub in ["requests", "responses", "streams", "errors"] {
        for e in std::fs::read_dir(dir(sub)).unwrap().flatten() {
            let p = e.path();
            if p.file_name().unwrap().to_string_lossy().contains("-to-") {
                assert!(
                    named.contains(&p),
                    "{} is named by no cell of docs/translation.md",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn gemini_and_ollama_streams_cut_short_end_with_an_error_in_each_clients_dialect() {
    for (from, file) in [
        (Dialect::Gemini, "tool_calls.gemini.sse"),
        (Dialect::Ollama, "tool_calls.ollama.ndjson"),
    ] {
        let input = std::fs::read(dir("streams").join(file)).unwrap();
        // Cut in the middle of an event, and cut between whole events before the last.
        // Where the last event starts: its `data:` line, or its NDJSON line.
        let last_event = match from {
            Dialect::Ollama => {
                input[..input.len() - 1]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .unwrap()
                    + 1
            }
            _ => input.windows(5).rposition(|w| w == b"data:").unwrap(),
        };
        for cut in [&input[..input.len() / 2], &input[..last_event]] {
            for to in others(from) {
                let mut t = Transcoder::new(from, to, true);
                let mut out = t.feed(cut).to_vec();
                out.extend_from_slice(&t.finish());
                let text = String::from_utf8(out).unwrap();
                assert!(t.failure().is_some(), "{file} -> {}: {text}", to.as_str());
                let looks_complete = match to {
                    Dialect::OpenAi => text.contains("[DONE]"),
                    Dialect::Anthropic => text.contains("message_stop"),
                    Dialect::Gemini => text.contains("finishReason"),
                    Dialect::Ollama => text.contains("\"done\":true"),
                };
                assert!(
                    !looks_complete,
                    "{file} -> {}: a cut stream looks complete: {text}",
                    to.as_str()
                );
                let says_error = match to {
                    Dialect::Anthropic => text.contains("event: error"),
                    _ => text.contains("\"error\""),
                };
                assert!(says_error, "{file} -> {}: {text}", to.as_str());
            }
        }
    }
    // A line that is not JSON, mid-stream, ends it too; what came before still goes out.
    let stream = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},\"done\":false}\nnot json\n";
    let mut t = Transcoder::new(Dialect::Ollama, Dialect::OpenAi, true);
    let out = String::from_utf8(t.feed(stream.as_bytes()).to_vec()).unwrap();
    assert!(out.contains("\"content\":\"hi\""), "{out}");
    assert!(out.contains("\"error\""), "{out}");
}

/// A streamed tool call whose arguments end up not a JSON object cannot be handed to a client
/// that takes arguments only as an object: its stream ends with an error, never with `{}`.
#[test]
fn streamed_arguments_that_are_no_object_end_the_stream_for_gemini_and_ollama_clients() {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let input = [
        chunk(
            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                   "function": {"name": "delete_file", "arguments": "{\"path\": "}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    for to in [Dialect::Gemini, Dialect::Ollama] {
        let out = transcode(Dialect::OpenAi, to, &[input.as_bytes()]);
        assert!(out.contains("delete_file"), "{out}");
        assert!(out.contains("not a JSON object"), "{out}");
        assert!(
            !out.contains("functionCall") && !out.contains("tool_calls"),
            "{out}"
        );
        assert!(
            !out.contains("\"done\":true"),
            "no normal end after the error: {out}"
        );
    }
}

/// A Gemini stream that ends in a failed tool call ends the client's stream with an error, not
/// with a plain stop.
#[test]
fn a_gemini_stream_ending_in_a_failed_tool_call_ends_with_an_error() {
    let chunk = |parts: Value, finish: Option<&str>| {
        let mut c = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = f.into();
        }
        format!("data: {}\r\n\r\n", json!({"candidates": [c], "responseId": "r1"}))
    };
    let input = chunk(json!([{"text": "Let me"}]), None) + &chunk(json!([]), Some("MALFORMED_FUNCTION_CALL"));
    for to in [Dialect::OpenAi, Dialect::Anthropic, Dialect::Ollama] {
        let out = transcode(Dialect::Gemini, to, &[input.as_bytes()]);
        assert!(out.contains("Let me"), "{out}");
        assert!(out.contains("MALFORMED_FUNCTION_CALL"), "{out}");
        assert!(
            !out.contains("[DONE]") && !out.contains("message_stop") && !out.contains("\"done\":true"),
            "{out}"
        );
    }
}
