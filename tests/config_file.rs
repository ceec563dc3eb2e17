//! The shipped config/meterd.toml is valid and spells out exactly the defaults.

#[test]
fn shipped_config_is_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/meterd.toml");
    let loaded = meterd::config::Config::load_over(meterd::config::Config::default(), Some(&path)).unwrap();
    assert_eq!(loaded, meterd::config::Config::default());
}
