//! deploy/grafana/meterd.json is a dashboard Grafana imports as it is, whose queries name only
//! metrics meterd exports, that shows every metric, and that has a panel for every alert of
//! docs/alerts.yml.
//!
//! The alert-to-panel mapping: a panel whose description says `Alert: <AlertName>` is that alert's
//! panel, and its queries must use every metric the alert's expression uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use prometheus::proto::MetricType;
use serde_json::Value;
use yaml_rust2::YamlLoader;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/meterd.json")).expect("deploy/grafana/meterd.json is JSON")
}

/// Every metric meterd exports, with whether it is a histogram. (The one call into the library.)
fn exported() -> BTreeMap<String, bool> {
    meterd::telemetry::metrics::Metrics::new()
        .registry
        .gather()
        .iter()
        .map(|family| (family.name().to_string(), family.get_field_type() == MetricType::HISTOGRAM))
        .collect()
}

/// Series Prometheus itself adds to every scrape target; the only non-meterd names allowed.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];

/// PromQL functions and Grafana's `label_values`: a name followed by `(` must be one of these.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "ceil",
    "changes",
    "clamp_max",
    "clamp_min",
    "delta",
    "deriv",
    "floor",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_replace",
    "label_values",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "time",
    "timestamp",
    "vector",
];
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];
/// Keywords followed by a parenthesised list of label names (optional after `group_*`).
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
const KEYWORDS: &[&str] = &["bool", "and", "or", "unless", "offset"];

/// What a PromQL expression (with Grafana's `$variables`) names.
#[derive(Debug, Default, PartialEq)]
struct Names {
    metrics: Vec<String>,
    variables: Vec<String>,
}

/// A small PromQL scanner: skips strings, label matchers `{..}`, ranges `[..]`, numbers and
/// durations, label lists after `by`/`on`/..., and `$variables` (collected); a name followed by `(`
/// is a function or aggregation and must be known; any other name is a metric.
fn names(expr: &str) -> Names {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Names::default();
    let mut i = 0;
    // The index just past the quoted string that starts at `i`.
    let skip_string = |mut i: usize| -> usize {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        assert!(i < chars.len(), "{expr:?}: unterminated string");
        i + 1
    };
    // The index just past the `close` that ends what starts at `i`, skipping quoted strings.
    let skip_to = |mut i: usize, close: char| -> usize {
        while i < chars.len() {
            match chars[i] {
                c if c == close => return i + 1,
                '"' | '\'' | '`' => i = skip_string(i),
                _ => i += 1,
            }
        }
        panic!("{expr:?}: no closing {close:?}");
    };
    let next_non_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        chars.get(i).copied()
    };
    let mut depth = 0i32;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '$' {
            i += 1; // a variable: collected below, wherever it stands
            if chars.get(i) == Some(&'{') {
                i = skip_to(i + 1, '}');
            }
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let opens = next_non_space(i) == Some('(');
            if LABEL_LISTS.contains(&word.as_str()) {
                assert!(opens || word.starts_with("group_"), "{expr:?}: {word} without a label list");
                if opens {
                    let open = i + chars[i..].iter().position(|&c| c == '(').unwrap();
                    i = skip_to(open + 1, ')');
                }
            } else if KEYWORDS.contains(&word.as_str()) || AGGREGATIONS.contains(&word.as_str()) {
            } else if opens {
                assert!(FUNCTIONS.contains(&word.as_str()), "{expr:?}: unknown function {word}");
            } else {
                out.metrics.push(word);
            }
        } else {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "{expr:?}: unbalanced parentheses");
            i += 1;
        }
    }
    assert_eq!(depth, 0, "{expr:?}: unbalanced parentheses");
    // `$name` and `${name}`, in matchers and ranges too.
    for (at, _) in expr.match_indices('$') {
        let rest = expr[at + 1..].strip_prefix('{').unwrap_or(&expr[at + 1..]);
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert!(!name.is_empty(), "{expr:?}: a lone $");
        out.variables.push(name);
    }
    out
}

/// `label_values(metric{...}, label)` names the metric; the label is not one.
fn variable_query_names(query: &str) -> Names {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query {query:?} is not label_values(METRIC, LABEL)"));
    let (selector, label) = inner.rsplit_once(',').expect("label_values(METRIC, LABEL)");
    assert!(label.trim().chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{query:?}");
    names(selector)
}

/// The panels, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn exprs(panel: &Value) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .map_or(vec![], |t| t.iter().map(|t| t["expr"].as_str().expect("expr")).collect())
}

fn panel_metrics(panel: &Value) -> BTreeSet<String> {
    exprs(panel).into_iter().flat_map(|e| names(e).metrics).collect()
}

/// Alert name -> its `expr`, from docs/alerts.yml.
fn alerts() -> Vec<(String, String)> {
    let docs = YamlLoader::load_from_str(&read("docs/alerts.yml")).expect("docs/alerts.yml is YAML");
    let mut out = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            out.push((name.to_string(), rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

/// A metric name's exported family: itself, or a histogram's `_bucket`/`_sum`/`_count` series.
fn family<'n>(name: &'n str, exported: &BTreeMap<String, bool>) -> Option<&'n str> {
    if exported.contains_key(name) || PROMETHEUS_SERIES.contains(&name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| exported.get(*base) == Some(&true))
}

#[test]
fn the_scanner_finds_metrics_functions_and_variables() {
    let found = names(
        r#"histogram_quantile(0.99, sum by (le, operation) (rate(meterd_api_request_duration_seconds_bucket{job=~"$job", x="a}b"}[$__rate_interval]))) / on (instance) group_left up offset 5m > bool 1e3"#,
    );
    assert_eq!(found.metrics, ["meterd_api_request_duration_seconds_bucket", "up"]);
    assert_eq!(found.variables, ["job", "__rate_interval"]);
    assert_eq!(names("vector(0.8 * ${max_bytes})").variables, ["max_bytes"]);
    assert_eq!(names("sum without (reason) (a) and b unless c:d").metrics, ["a", "b", "c:d"]);
    assert_eq!(
        variable_query_names(r#"label_values(meterd_records{job=~"$job"}, instance)"#).metrics,
        ["meterd_records"]
    );
    assert!(std::panic::catch_unwind(|| names("rat(meterd_records[5m])")).is_err(), "unknown function");
    assert!(std::panic::catch_unwind(|| names("sum(rate(meterd_records[5m])")).is_err(), "unbalanced");
    let exported = exported();
    assert_eq!(family("meterd_ack_latency_seconds_bucket", &exported), Some("meterd_ack_latency_seconds"));
    assert_eq!(family("meterd_records_count", &exported), None, "meterd_records is no histogram");
    assert_eq!(family("meterd_record", &exported), None);
}

#[test]
fn every_query_names_only_metrics_meterd_exports() {
    let dashboard = dashboard();
    let exported = exported();
    let mut queries = 0;
    for panel in panels(&dashboard) {
        for expr in exprs(panel) {
            queries += 1;
            for metric in names(expr).metrics {
                assert!(
                    family(&metric, &exported).is_some(),
                    "panel {:?} queries {metric}, which meterd does not export ({expr})",
                    panel["title"]
                );
            }
        }
    }
    assert!(queries >= 20, "only {queries} queries");
    for variable in dashboard["templating"]["list"].as_array().expect("templating.list") {
        if variable["type"] == "query" {
            let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).expect("query");
            let metrics = variable_query_names(query).metrics;
            assert_eq!(metrics.len(), 1, "{query}");
            assert!(
                exported.contains_key(&metrics[0]),
                "variable {} queries {}",
                variable["name"],
                metrics[0]
            );
        }
    }
}

#[test]
fn every_exported_metric_has_a_panel() {
    let dashboard = dashboard();
    let exported = exported();
    assert!(exported.len() >= 15);
    let shown: BTreeSet<&str> = panels(&dashboard)
        .into_iter()
        .flat_map(panel_metrics)
        .filter_map(|m| family(&m, &exported).map(str::to_string))
        .collect::<BTreeSet<String>>()
        .into_iter()
        .map(|m| exported.get_key_value(&m).map_or("up", |(k, _)| k.as_str()))
        .collect();
    let missing: Vec<&String> = exported.keys().filter(|m| !shown.contains(m.as_str())).collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}

#[test]
fn every_alert_has_a_panel_that_shows_its_metrics() {
    let dashboard = dashboard();
    let alerts = alerts();
    assert!(alerts.len() >= 6, "{alerts:?}");
    let panels = panels(&dashboard);
    for (alert, expr) in &alerts {
        let wanted: BTreeSet<String> = names(expr).metrics.into_iter().collect();
        assert!(!wanted.is_empty(), "{alert}: {expr}");
        let mine: Vec<&&Value> = panels
            .iter()
            .filter(|p| p["description"].as_str().unwrap_or("").contains(&format!("Alert: {alert}.")))
            .collect();
        assert!(!mine.is_empty(), "no panel's description says \"Alert: {alert}.\"");
        for panel in mine {
            let shown = panel_metrics(panel);
            assert!(
                wanted.is_subset(&shown),
                "panel {:?} is {alert}'s but does not query {:?}",
                panel["title"],
                wanted.difference(&shown).collect::<Vec<_>>()
            );
        }
    }
    // And no panel names an alert that does not exist.
    let known: BTreeSet<&str> = alerts.iter().map(|(name, _)| name.as_str()).collect();
    for panel in panels {
        let description = panel["description"].as_str().unwrap_or("");
        for named in description.split("Alert: ").skip(1) {
            let name = named.split('.').next().unwrap();
            assert!(
                known.contains(name),
                "panel {:?} names alert {name}, not in docs/alerts.yml",
                panel["title"]
            );
        }
    }
}

#[test]
fn the_dashboard_imports_as_is() {
    let dashboard = dashboard();
    let text = read("deploy/grafana/meterd.json");
    // No export placeholders (`__inputs`, ${DS_...}) that only the import dialog fills in.
    assert!(dashboard.get("__inputs").is_none());
    assert!(!text.contains("${DS_"), "a ${{DS_...}} placeholder");
    assert_eq!(dashboard["uid"], "meterd");
    assert_eq!(dashboard["title"], "meterd");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36, "panels with datasource objects");
    assert!(dashboard.get("id").is_none_or(Value::is_null), "an id would clash on import");

    // The data source is a variable the viewer picks, so any Prometheus works.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let defined: BTreeSet<&str> = variables.iter().map(|v| v["name"].as_str().unwrap()).collect();
    let datasource = variables.iter().find(|v| v["name"] == "datasource").expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let expected_source = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(variable["datasource"], expected_source, "variable {}", variable["name"]);
    }

    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().expect("every panel has a title").to_string();
        assert!(ids.insert(panel["id"].as_u64().expect("id")), "panel id {} twice", panel["id"]);
        let grid = &panel["gridPos"];
        let [x, y, w, h] =
            ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap_or_else(|| panic!("{title}: gridPos.{k}")));
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: {grid}");
        for (other, [ox, oy, ow, oh]) in &boxes {
            let apart = x + w <= *ox || ox + ow <= x || y + h <= *oy || oy + oh <= y;
            assert!(apart, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((title.clone(), [x, y, w, h]));
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat"].contains(&panel["type"].as_str().unwrap()),
            "{title}: {}",
            panel["type"]
        );
        assert_eq!(panel["datasource"], expected_source, "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} queries nothing");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"], expected_source, "{title}");
            assert!(ref_ids.insert(target["refId"].as_str().expect("refId")), "{title}: refId twice");
            for variable in names(target["expr"].as_str().unwrap()).variables {
                let builtin = ["__rate_interval", "__interval", "__range"].contains(&variable.as_str());
                assert!(
                    builtin || defined.contains(variable.as_str()),
                    "{title}: ${variable} is not defined"
                );
            }
        }
    }
    assert!(ids.len() >= 20, "{} panels", ids.len());
}
