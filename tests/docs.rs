//! The reference docs name exactly what the code has: every configuration key with its
//! environment variable, every metric, and only real metrics in the alert rules.

use std::path::Path;

fn doc(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name)).unwrap()
}

fn metric_names() -> Vec<String> {
    meterd::telemetry::metrics::Metrics::new()
        .registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect()
}

#[test]
fn configuration_md_names_every_key_and_its_environment_variable() {
    let text = doc("configuration.md");
    for (section, keys) in meterd::config::KEYS {
        let table = text
            .split(&format!("## `[{section}]`"))
            .nth(1)
            .unwrap_or_else(|| panic!("no [{section}] section"));
        let table = table.split("\n## ").next().unwrap();
        for key in *keys {
            let env = format!("METERD_{}__{}", section.to_uppercase(), key.to_uppercase());
            assert!(table.contains(&format!("| `{key}`")), "[{section}] {key} is not documented");
            assert!(table.contains(&format!("`{env}`")), "{env} is not documented");
        }
    }
}

#[test]
fn metrics_md_names_every_metric() {
    let text = doc("metrics.md");
    let names = metric_names();
    assert!(names.len() >= 15);
    for name in names {
        assert!(text.contains(&format!("| `{name}` |")), "{name} is not in docs/metrics.md");
    }
}

#[test]
fn alert_rules_use_only_real_metrics() {
    let rules = doc("alerts.yml");
    let names = metric_names();
    let used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|token| token.starts_with("meterd_"))
        .collect();
    assert!(used.len() >= 5, "{used:?}");
    for token in used {
        let base = ["_bucket", "_sum", "_count"].iter().fold(token, |t, s| t.strip_suffix(s).unwrap_or(t));
        assert!(names.iter().any(|n| n == base), "alerts.yml uses {token}, which meterd does not export");
    }
}

/// Prometheus's naming rules as `promtool check metrics` applies them (client_golang's promlint):
/// help on every metric, `_total` on counters and only there, base units only (seconds, bytes),
/// no unit abbreviations, no type in the name, `_count`/`_sum`/`_bucket` and the `le`/`quantile`
/// labels only on histograms and summaries, snake_case, no colons. Checked here on every metric;
/// and by promtool itself when the machine has it.
#[test]
fn every_metric_follows_the_prometheus_naming_rules() {
    use prometheus::proto::MetricType;
    let metrics = meterd::telemetry::metrics::Metrics::new();
    let non_base =
        ["minutes", "hours", "days", "weeks", "bits", "milliseconds", "microseconds", "nanoseconds"];
    let abbreviations = ["s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d"];
    let mut problems = Vec::new();
    for family in metrics.registry.gather() {
        let name = family.name();
        let words: Vec<&str> = name.split('_').collect();
        let kind = family.get_field_type();
        let (counter, histogram) = (kind == MetricType::COUNTER, kind == MetricType::HISTOGRAM);
        let mut problem = |text: &str| problems.push(format!("{name}: {text}"));
        if family.help().is_empty() {
            problem("no help text");
        }
        if counter != name.ends_with("_total") {
            problem("`_total` is for counters, and every counter has it");
        }
        if let Some(unit) = words.iter().find(|w| non_base.contains(w)) {
            problem(&format!("use a base unit, not {unit}"));
        }
        if words.iter().skip(1).any(|w| abbreviations.contains(w)) {
            problem("an abbreviated unit");
        }
        if ["counter", "gauge", "histogram", "summary"].iter().any(|t| words.contains(t)) {
            problem("the type in the name");
        }
        if !histogram && ["_count", "_sum", "_bucket"].iter().any(|s| name.ends_with(s)) {
            problem("a histogram's suffix");
        }
        let labels =
            family.get_metric().iter().flat_map(|m| m.get_label().iter().map(|l| l.name().to_string()));
        if labels.clone().any(|l| (l == "le" && !histogram) || l == "quantile") {
            problem("a histogram's or summary's label");
        }
        if name.contains(':')
            || name.chars().any(|c| c.is_ascii_uppercase())
            || labels.clone().any(|l| l.chars().any(|c| c.is_ascii_uppercase()))
        {
            problem("not snake_case");
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    if let Ok(mut promtool) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        promtool.stdin.take().unwrap().write_all(metrics.render().as_bytes()).unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
