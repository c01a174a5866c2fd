//! Spend from the audit log: the fold that rebuilds the ledger on start, and the reports of
//! `GET /admin/spend` and `lattice spend`. Both read the same records, so they agree with the
//! log by construction.
//!
//! A call's charge is its `call.decision` record's reservation settled by its `call.end`
//! record's `spend` (matched by the reservation's id). A reservation without a
//! settlement (the process died, or the end record was lost with the last moment before a
//! crash) is charged at its reserved amount: never forgotten, never free.
//!
//! Only the sealed log is read: records past the last seal at its end (a write a crash cut
//! short before its sync) are set aside by the next start's recovery, so a report read before
//! that start must not count them either. An end record there would settle, in the report, a
//! call the rebuilt ledger charges at its reservation.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::ledger::{AccountRef, Amount};
use super::{Reserved, Settlement, usd};

/// One metered call, as the log tells it.
#[derive(Debug, Clone)]
pub struct Charge {
    /// When the call was decided (the decision record's time).
    pub time_ns: u64,
    pub key: String,
    pub user: String,
    pub team: String,
    pub model: String,
    pub accounts: Vec<AccountRef>,
    pub reserved: Amount,
    pub settlement: Option<Settlement>,
}

impl Charge {
    /// What the call costs: its settlement, else its reservation.
    pub fn charged(&self) -> Amount {
        self.settlement.as_ref().map_or(self.reserved, |s| s.charged)
    }
}

#[derive(Deserialize)]
struct Who {
    #[serde(default)]
    id: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    team: String,
}

#[derive(Deserialize)]
struct Decision<'a> {
    #[serde(default)]
    principal: Option<Who>,
    #[serde(borrow)]
    budget: Option<Reserved<'a>>,
}

#[derive(Deserialize)]
struct End {
    spend: Option<Settlement>,
}

/// Calls `f` with every metered call in the log: settled ones as their end record is read,
/// unsettled ones at the end.
pub fn replay(storage: &dyn lattice_audit::Storage, mut f: impl FnMut(Charge)) -> std::io::Result<()> {
    let mut open: HashMap<String, Charge> = HashMap::new();
    lattice_audit::verify::for_each_sealed_record(storage, |r| match r.event.kind.as_str() {
        lattice_audit::log::CALL_DECISION => {
            if let Ok(Decision {
                principal,
                budget: Some(b),
            }) = serde_json::from_slice::<Decision>(&r.event.payload)
            {
                let who = principal.unwrap_or(Who {
                    id: String::new(),
                    user: String::new(),
                    team: String::new(),
                });
                open.insert(
                    b.id.into_owned(),
                    Charge {
                        time_ns: r.time_ns,
                        key: who.id,
                        user: who.user,
                        team: who.team,
                        model: b.model.into_owned(),
                        accounts: b.accounts.into_owned(),
                        reserved: b.reserved,
                        settlement: None,
                    },
                );
            }
        }
        lattice_audit::log::CALL_END => {
            if let Ok(End { spend: Some(s) }) = serde_json::from_slice::<End>(&r.event.payload)
                && let Some(mut c) = open.remove(&s.id)
            {
                c.settlement = Some(s);
                f(c);
            }
        }
        _ => {}
    })?;
    let mut rest: Vec<Charge> = open.into_values().collect();
    rest.sort_by_key(|c| c.time_ns);
    rest.into_iter().for_each(f);
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Team,
    User,
    Key,
    Model,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "team" => Some(GroupBy::Team),
            "user" => Some(GroupBy::User),
            "key" => Some(GroupBy::Key),
            "model" => Some(GroupBy::Model),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::User => "user",
            GroupBy::Key => "key",
            GroupBy::Model => "model",
        }
    }
}

/// One group's spend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    pub calls: u64,
    /// Calls charged at their reservation (no settlement in the log).
    pub unsettled_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub tokens: u64,
    pub nano_usd: u64,
}

impl Row {
    fn add(&mut self, r: &Row) {
        self.calls += r.calls;
        self.unsettled_calls += r.unsettled_calls;
        self.input_tokens += r.input_tokens;
        self.output_tokens += r.output_tokens;
        self.cached_input_tokens += r.cached_input_tokens;
        self.cache_write_tokens += r.cache_write_tokens;
        self.tokens += r.tokens;
        self.nano_usd += r.nano_usd;
    }
}

/// A spend report: rows by group (one or two keys), over `[since, until)`.
#[derive(Debug, Clone)]
pub struct Report {
    pub group_by: Vec<GroupBy>,
    pub since_ns: u64,
    pub until_ns: u64,
    pub rows: BTreeMap<Vec<String>, Row>,
}

impl Report {
    pub fn new(group_by: Vec<GroupBy>, since_ns: u64, until_ns: u64) -> Report {
        Report {
            group_by,
            since_ns,
            until_ns,
            rows: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, c: &Charge) {
        if c.time_ns < self.since_ns || c.time_ns >= self.until_ns {
            return;
        }
        let key = self
            .group_by
            .iter()
            .map(|g| match g {
                GroupBy::Team => c.team.clone(),
                GroupBy::User => c.user.clone(),
                GroupBy::Key => c.key.clone(),
                GroupBy::Model => c.model.clone(),
            })
            .collect();
        let charged = c.charged();
        let usage = c.settlement.as_ref().map(|s| s.usage).unwrap_or_default();
        self.rows.entry(key).or_default().add(&Row {
            calls: 1,
            unsettled_calls: u64::from(c.settlement.is_none()),
            input_tokens: usage.input,
            output_tokens: usage.output,
            cached_input_tokens: usage.cached_input,
            cache_write_tokens: usage.cache_write,
            tokens: charged.tokens,
            nano_usd: charged.nano_usd,
        });
    }

    pub fn total(&self) -> Row {
        self.rows.values().fold(Row::default(), |mut t, r| {
            t.add(r);
            t
        })
    }

    fn row_json(&self, key: Option<&[String]>, r: &Row) -> serde_json::Value {
        let mut v = serde_json::json!({
            "calls": r.calls,
            "unsettled_calls": r.unsettled_calls,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "cached_input_tokens": r.cached_input_tokens,
            "cache_write_tokens": r.cache_write_tokens,
            "tokens": r.tokens,
            "cost_usd": usd(r.nano_usd),
        });
        if let Some(key) = key {
            for (g, k) in self.group_by.iter().zip(key) {
                v[g.name()] = k.as_str().into();
            }
        }
        v
    }

    pub fn json(&self) -> serde_json::Value {
        let rows: Vec<_> = self.rows.iter().map(|(k, r)| self.row_json(Some(k), r)).collect();
        let time = |ns: u64| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
                .to_string()
        };
        serde_json::json!({
            "group_by": self.group_by.iter().map(|g| g.name()).collect::<Vec<_>>(),
            "since": time(self.since_ns),
            "until": (self.until_ns != u64::MAX).then(|| time(self.until_ns)),
            "rows": rows,
            "total": self.row_json(None, &self.total()),
        })
    }

    pub fn csv(&self) -> String {
        let mut out = String::new();
        for g in &self.group_by {
            out.push_str(g.name());
            out.push(',');
        }
        out.push_str("calls,unsettled_calls,input_tokens,output_tokens,cached_input_tokens,cache_write_tokens,tokens,cost_usd\n");
        for (k, r) in &self.rows {
            for v in k {
                out.push_str(&csv_field(v));
                out.push(',');
            }
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{}\n",
                r.calls,
                r.unsettled_calls,
                r.input_tokens,
                r.output_tokens,
                r.cached_input_tokens,
                r.cache_write_tokens,
                r.tokens,
                usd(r.nano_usd)
            ));
        }
        out
    }
}

/// A time as a query or command line gives it: an RFC 3339 time, or a duration from now
/// (`later`: ahead, else back); since the Unix epoch.
pub fn time_arg(s: &str, later: bool) -> Option<std::time::Duration> {
    let t = match humantime::parse_duration(s) {
        Ok(d) if later => std::time::SystemTime::now().checked_add(d),
        Ok(d) => std::time::SystemTime::now().checked_sub(d),
        Err(_) => humantime::parse_rfc3339_weak(s).ok(),
    };
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
}

/// [`time_arg`] back from now, in Unix nanoseconds.
pub fn time_ns(s: &str) -> Option<u64> {
    time_arg(s, false).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// What a report asks for: `group_by` (one or two of team, user, key, model, comma-separated;
/// default team), `since` / `until` (default: everything), `format` (json or csv).
#[derive(Debug, Clone)]
pub struct Query {
    pub group_by: Vec<GroupBy>,
    pub since_ns: u64,
    pub until_ns: u64,
    pub format: Format,
}

impl Query {
    /// From `name=value` pairs (the URL query, or the command line's flags).
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Query, String> {
        let mut q = Query {
            group_by: vec![GroupBy::Team],
            since_ns: 0,
            until_ns: u64::MAX,
            format: Format::Json,
        };
        for (k, v) in pairs {
            match k {
                "group_by" => {
                    q.group_by = v
                        .split(',')
                        .map(|g| GroupBy::parse(g.trim()))
                        .collect::<Option<Vec<_>>>()
                        .filter(|g| (1..=2).contains(&g.len()))
                        .ok_or_else(|| {
                            format!("group_by `{v}`: one or two of team, user, key, model (comma-separated)")
                        })?;
                }
                "since" | "until" => {
                    let t = time_ns(v).ok_or_else(|| {
                        format!("{k} `{v}`: an RFC 3339 time or a duration back from now such as 7d")
                    })?;
                    if k == "since" {
                        q.since_ns = t;
                    } else {
                        q.until_ns = t;
                    }
                }
                "format" => {
                    q.format = match v {
                        "json" => Format::Json,
                        "csv" => Format::Csv,
                        _ => return Err(format!("format `{v}`: json or csv")),
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown parameter `{k}`: use group_by, since, until, format"
                    ));
                }
            }
        }
        Ok(q)
    }

    /// Reads the log and builds the report.
    pub fn run(&self, storage: &dyn lattice_audit::Storage) -> std::io::Result<Report> {
        let mut r = Report::new(self.group_by.clone(), self.since_ns, self.until_ns);
        replay(storage, |c| r.add(&c))?;
        Ok(r)
    }
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet does
/// not run a name as a formula.
fn csv_field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@']) {
        format!("'{v}")
    } else {
        v.to_string()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("research"), "research");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
