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
