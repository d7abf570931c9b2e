//! Spend budgets and token usage (issue #21), the launcher's side: `budget:` in moat.yaml
//! and `--budget` become the run's limits; the compiled-in price table, with the user's
//! `MOAT_HOME/prices.yaml` over it, goes with them to the proxy as one `usage_rules`
//! record on the rules pipe. The proxy's `usage` and `budget_exceeded` records (which the
//! supervisor also passes to the audit log) are kept in the run's `usage.jsonl`, their
//! totals in its metadata; `trace --usage` and `list` show them.

use crate::store::{Metadata, Store};
use moat_core::{Error, MoatHome, Result, cli};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// The shipped price table (USD per million tokens; its header says when and where from).
pub const DEFAULT_PRICES: &str = include_str!("prices.yaml");
/// `MOAT_HOME/prices.yaml` larger than this is refused.
const PRICES_MAX: u64 = 1 << 20;

/// `budget:` in moat.yaml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct BudgetSection {
    pub tokens: Option<u64>,
    /// `"$1.50"` or `1.5`.
    pub cost: Option<Value>,
    pub cost_usd: Option<f64>,
    pub requests_per_minute: Option<u64>,
}

pub const SECTION_KEYS: &[&str] = &["tokens", "cost", "cost_usd", "requests_per_minute"];

/// The limits a run is held to, as the proxy reads them (`usage_rules.budget`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micro_usd: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
}

/// Dollars (`1.50`, `$1.50`, `0.000001`) as micro-dollars; above 0, at most $1,000,000.
pub fn parse_money(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let t = t.strip_prefix('$').unwrap_or(t);
    let bad = || format!("{s:?} is not an amount of dollars such as 1.50 or $0.25");
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 6 {
        return Err(format!("{s:?}: at most 6 decimals (a micro-dollar)"));
    }
    let w: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    if w > 1_000_000 {
        return Err(format!("{s:?}: at most $1000000"));
    }
    let f: u64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    let m = w * 1_000_000 + f;
    if m == 0 {
        return Err(format!("{s:?}: a budget must be above 0"));
    }
    Ok(m)
}

/// Micro-dollars as dollars: two decimals at least, more only when they are not zero.
pub fn money(micro: u64) -> String {
    let frac = format!("{:06}", micro % 1_000_000);
    let frac = frac.trim_end_matches('0');
    format!("${}.{frac:0<2}", micro / 1_000_000)
}

fn positive(v: u64, what: &str) -> std::result::Result<u64, String> {
    if v == 0 {
        Err(format!("{what}: a budget must be above 0"))
    } else {
        Ok(v)
    }
}

/// The run's budget: each limit from `--budget` if given there, else from moat.yaml.
pub fn resolve(flags: &[String], file: &BudgetSection, file_name: &str) -> Result<Budget> {
    let cfg = |m: String| Error::config(format!("{file_name}: budget.{m}"));
    let mut b = Budget {
        tokens: file
            .tokens
            .map(|t| positive(t, "tokens"))
            .transpose()
            .map_err(cfg)?,
        requests_per_minute: file
            .requests_per_minute
            .map(|t| positive(t, "requests_per_minute"))
            .transpose()
            .map_err(cfg)?,
        cost_micro_usd: None,
    };
    match (&file.cost, file.cost_usd) {
        (Some(_), Some(_)) => return Err(cfg("cost and cost_usd: give one".into())),
        (Some(Value::String(s)), None) => {
            b.cost_micro_usd = Some(parse_money(s).map_err(|m| cfg(format!("cost: {m}")))?)
        }
        (Some(Value::Number(n)), None) => {
            b.cost_micro_usd =
                Some(parse_money(&n.to_string()).map_err(|m| cfg(format!("cost: {m}")))?)
        }
        (Some(_), None) => return Err(cfg("cost: expected an amount such as \"$1.50\"".into())),
        (None, Some(f)) => {
            if !f.is_finite() {
                return Err(cfg("cost_usd: not a number".into()));
            }
            b.cost_micro_usd =
                Some(parse_money(&format!("{f}")).map_err(|m| cfg(format!("cost_usd: {m}")))?)
        }
        (None, None) => {}
    }
    for flag in flags {
        for item in flag.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let usage =
                |m: String| cli::usage_error(format!("--budget {flag:?}: {m}"), crate::args::USAGE);
            let Some((k, v)) = item.split_once('=') else {
                return Err(usage(format!(
                    "{item:?}: expected KEY=VALUE (tokens=N, cost=USD, rpm=N)"
                )));
            };
            let count = |v: &str| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{k}={v}: expected a whole number"))
                    .and_then(|n| positive(n, k))
            };
            match k.trim() {
                "tokens" => b.tokens = Some(count(v).map_err(usage)?),
                "rpm" | "requests_per_minute" => {
                    b.requests_per_minute = Some(count(v).map_err(usage)?)
                }
                "cost" | "cost_usd" => b.cost_micro_usd = Some(parse_money(v).map_err(usage)?),
                other => {
                    return Err(usage(format!(
                        "unknown budget {other:?} (tokens, cost, rpm)"
                    )));
                }
            }
        }
    }
    Ok(b)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub model: String,
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_write: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    #[allow(dead_code)]
    taken: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    #[serde(default)]
    prices: Vec<Price>,
}

fn parse_prices(text: &str, file: &str) -> Result<Vec<Price>> {
    if text.trim().is_empty() {
        return Ok(vec![]);
    }
    let f: PriceFile = serde_saphyr::from_str(text).map_err(|e| {
        Error::config(format!(
            "{file}: {}",
            e.to_string().lines().next().unwrap_or("not a price table")
        ))
    })?;
    for p in &f.prices {
        let ok = |x: f64| x.is_finite() && (0.0..=1e6).contains(&x);
        if p.model.trim().is_empty() || p.model.len() > 128 {
            return Err(Error::config(format!(
                "{file}: a price's model must be 1 to 128 characters"
            )));
        }
        if !(ok(p.input) && ok(p.output) && ok(p.cache_read) && ok(p.cache_write)) {
            return Err(Error::config(format!(
                "{file}: model {:?}: prices must be numbers from 0 to 1000000 (USD per million tokens)",
                p.model
            )));
        }
    }
    Ok(f.prices)
}

/// The shipped table with `MOAT_HOME/prices.yaml` over it: an entry there replaces the
/// shipped entry for the same model pattern and adds the others.
pub fn prices(home: &MoatHome) -> Result<Vec<Price>> {
    let mut table = parse_prices(DEFAULT_PRICES, "the shipped prices.yaml")?;
    let path = home.root().join("prices.yaml");
    let text = match std::fs::File::open(&path) {
        Ok(f) => {
            use std::io::Read;
            let mut s = String::new();
            f.take(PRICES_MAX + 1)
                .read_to_string(&mut s)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if s.len() as u64 > PRICES_MAX {
                return Err(Error::config(format!(
                    "{}: larger than 1 MiB",
                    path.display()
                )));
            }
            s
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    for p in parse_prices(&text, &path.display().to_string())? {
        table.retain(|q| !q.model.eq_ignore_ascii_case(&p.model));
        table.push(p);
    }
    Ok(table)
}

/// The `usage_rules` record for the proxy's rules pipe.
pub fn rules_record(home: &MoatHome, budget: &Budget) -> Result<String> {
    moat_core::jsonl::line(
        "usage_rules",
        &json!({"budget": budget, "prices": prices(home)?}),
    )
}

// ---------------------------------------------------------------- records and totals

/// A run's spend so far, kept in its metadata.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub requests: u64,
    pub tokens: u64,
    pub cost_micro_usd: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceeded: Vec<String>,
}

/// A proxy record on its way to the audit log: `usage` and `budget_exceeded` are also
/// appended (with the time) to the run's usage.jsonl, and counted into its metadata.
pub fn on_proxy_record(store: &Store, id: &str, line: &str) {
    let Ok(Some(rec)) = moat_core::jsonl::parse(line) else {
        return;
    };
    if rec.kind != "usage" && rec.kind != "budget_exceeded" {
        return;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(line) else {
        return;
    };
    v["ts"] = json!(moat_core::timefmt::now_rfc3339());
    if let Ok(s) = serde_json::to_string(&v) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(store.dir(id).join("usage.jsonl"))
            .and_then(|mut f| f.write_all(format!("{s}\n").as_bytes()));
    }
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let _ = store.update(id, |m| {
        let s = m.usage.get_or_insert_with(Spend::default);
        if rec.kind == "usage" {
            s.requests += 1;
            s.tokens = s.tokens.max(n("run_tokens"));
            s.cost_micro_usd = s.cost_micro_usd.max(n("run_cost_micro_usd"));
        } else if let Some(b) = v["budget"].as_str()
            && !s.exceeded.iter().any(|x| x == b)
            && s.exceeded.len() < 8
        {
            s.exceeded.push(clean(b));
        }
    });
}

/// `moat list`'s SPEND column.
pub fn spend_cell(m: &Metadata) -> String {
    match &m.usage {
        Some(s) if s.requests > 0 => money(s.cost_micro_usd),
        _ => "-".into(),
    }
}

/// Printable ASCII only, at most 128 characters: what is shown of a record's strings.
fn clean(s: &str) -> String {
    s.chars()
        .take(128)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[derive(Default)]
struct Row {
    requests: u64,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    cost: u64,
}

/// `trace --usage`: per-model totals, then one line per counted request and per budget
/// that ran out. With `--json`, the records as kept.
pub fn trace_usage(run: Option<&str>, json_out: bool) -> Result<()> {
    let store = Store::new(MoatHome::from_env()?);
    let m = store.resolve(run)?;
    let text = read_bounded(&store.dir(&m.id).join("usage.jsonl"))?;
    let recs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.is_object())
        .collect();
    let mut out = String::new();
    if json_out {
        for v in &recs {
            out.push_str(&serde_json::to_string(v)?);
            out.push('\n');
        }
        return cli::write_stdout(out.as_bytes());
    }
    if recs.is_empty() {
        eprintln!("no model usage recorded for {} ({})", m.name, m.id);
        return Ok(());
    }
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let s = |v: &Value, k: &str| clean(v[k].as_str().unwrap_or("-"));
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut lines = String::new();
    for v in &recs {
        let clock = s(v, "ts");
        let clock = clock
            .split_once('T')
            .map(|(_, t)| t.get(..8).unwrap_or(t).to_string())
            .unwrap_or(clock);
        match v["type"].as_str() {
            Some("usage") => {
                let r = rows.entry((s(v, "provider"), s(v, "model"))).or_default();
                r.requests += 1;
                r.input += n(v, "input_tokens");
                r.output += n(v, "output_tokens");
                r.cache_read += n(v, "cache_read_tokens");
                r.cache_write += n(v, "cache_write_tokens");
                r.cost += n(v, "cost_micro_usd");
                lines.push_str(&format!(
                    "[{clock}] {} {} {} in={} out={} cache_read={} cache_write={} {}{}\n",
                    s(v, "request_id"),
                    s(v, "provider"),
                    s(v, "model"),
                    n(v, "input_tokens"),
                    n(v, "output_tokens"),
                    n(v, "cache_read_tokens"),
                    n(v, "cache_write_tokens"),
                    money(n(v, "cost_micro_usd")),
                    v["note"]
                        .as_str()
                        .map(|x| format!(" ({})", clean(x)))
                        .unwrap_or_default()
                ));
            }
            Some("budget_exceeded") => {
                let b = s(v, "budget");
                let (used, limit) = if b == "cost" {
                    (money(n(v, "used")), money(n(v, "limit")))
                } else {
                    (n(v, "used").to_string(), n(v, "limit").to_string())
                };
                lines.push_str(&format!(
                    "[{clock}] {} budget exceeded: {used} of {limit}; {} refused\n",
                    b,
                    s(v, "request_id")
                ));
            }
            _ => {}
        }
    }
    let w = rows.keys().map(|k| k.1.len()).max().unwrap_or(5).max(5);
    out.push_str(&format!(
        "{:<w$}  {:<9}  {:>8}  {:>10}  {:>10}  {:>10}  {:>11}  COST\n",
        "MODEL", "PROVIDER", "REQUESTS", "INPUT", "OUTPUT", "CACHE_READ", "CACHE_WRITE"
    ));
    let mut total = Row::default();
    for ((p, model), r) in &rows {
        out.push_str(&format!(
            "{model:<w$}  {p:<9}  {:>8}  {:>10}  {:>10}  {:>10}  {:>11}  {}\n",
            r.requests,
            r.input,
            r.output,
            r.cache_read,
            r.cache_write,
            money(r.cost)
        ));
        total.requests += r.requests;
        total.input += r.input;
        total.output += r.output;
        total.cache_read += r.cache_read;
        total.cache_write += r.cache_write;
        total.cost += r.cost;
    }
    out.push_str(&format!(
        "{:<w$}  {:<9}  {:>8}  {:>10}  {:>10}  {:>10}  {:>11}  {}\n\n",
        "TOTAL",
        "",
        total.requests,
        total.input,
        total.output,
        total.cache_read,
        total.cache_write,
        money(total.cost)
    ));
    out.push_str(&lines);
    cli::write_stdout(out.as_bytes())
}

/// The run's usage.jsonl (absent: empty), at most 64 MiB.
fn read_bounded(p: &Path) -> Result<String> {
    use std::io::Read;
    match std::fs::File::open(p) {
        Ok(f) => {
            let mut b = Vec::new();
            f.take(64 << 20)
                .read_to_end(&mut b)
                .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
            Ok(String::from_utf8_lossy(&b).into_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_in_and_out() {
        assert_eq!(parse_money("1.50"), Ok(1_500_000));
        assert_eq!(parse_money("$0.000001"), Ok(1));
        assert_eq!(parse_money(".5"), Ok(500_000));
        assert!(parse_money("0").is_err());
        assert!(parse_money("1.0000001").is_err());
        assert!(parse_money("-1").is_err());
        assert!(parse_money("1e3").is_err());
        assert_eq!(money(1_500_000), "$1.50");
        assert_eq!(money(12_300), "$0.0123");
        assert_eq!(money(0), "$0.00");
    }

    #[test]
    fn the_flag_wins_per_limit_and_the_file_fills_the_rest() {
        let file = BudgetSection {
            tokens: Some(1000),
            cost: Some(json!("$5")),
            cost_usd: None,
            requests_per_minute: Some(10),
        };
        let b = resolve(&["tokens=50,cost=1.5".into()], &file, "moat.yaml").unwrap();
        assert_eq!(
            b,
            Budget {
                tokens: Some(50),
                cost_micro_usd: Some(1_500_000),
                requests_per_minute: Some(10)
            }
        );
        // A file cannot raise what the flag set: the flag's value stands.
        let raise = BudgetSection {
            tokens: Some(1_000_000),
            ..Default::default()
        };
        assert_eq!(
            resolve(&["tokens=50".into()], &raise, "moat.yaml")
                .unwrap()
                .tokens,
            Some(50)
        );
        let e = resolve(&["tokens=0".into()], &BudgetSection::default(), "m").unwrap_err();
        assert_eq!(e.code, moat_core::exit::USAGE);
        let e = resolve(&["speed=3".into()], &BudgetSection::default(), "m").unwrap_err();
        assert!(e.msg.contains("unknown budget"), "{}", e.msg);
        let e = resolve(
            &[],
            &BudgetSection {
                cost: Some(json!("lots")),
                ..Default::default()
            },
            "moat.yaml",
        )
        .unwrap_err();
        assert_eq!(e.code, moat_core::exit::CONFIG);
        assert_eq!(
            resolve(&[], &BudgetSection::default(), "m").unwrap(),
            Budget::default()
        );
    }

    #[test]
    fn the_shipped_table_parses_and_a_user_table_overrides() {
        let t = parse_prices(DEFAULT_PRICES, "shipped").unwrap();
        assert!(t.iter().any(|p| p.model == "claude-sonnet-4*"));
        let dir = tempfile::tempdir().unwrap();
        let home = MoatHome::at(dir.path());
        std::fs::write(
            dir.path().join("prices.yaml"),
            "prices:\n  - {model: \"claude-sonnet-4*\", input: 1, output: 2}\n  - {model: my-model, input: 0.5, output: 0.5}\n",
        )
        .unwrap();
        let t = prices(&home).unwrap();
        let s: Vec<&Price> = t.iter().filter(|p| p.model == "claude-sonnet-4*").collect();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].input, s[0].output), (1.0, 2.0));
        assert!(t.iter().any(|p| p.model == "my-model"));
        std::fs::write(
            dir.path().join("prices.yaml"),
            "prices:\n  - {model: x, input: -1, output: 2}\n",
        )
        .unwrap();
        assert_eq!(prices(&home).unwrap_err().code, moat_core::exit::CONFIG);
        std::fs::write(dir.path().join("prices.yaml"), "prise: []\n").unwrap();
        assert_eq!(prices(&home).unwrap_err().code, moat_core::exit::CONFIG);
    }
}
