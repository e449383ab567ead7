//! `PGCUTOVER_<SECTION>_<KEY>` overrides, applied to the TOML table before it is
//! deserialised so an override is checked exactly like the key it replaces.

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "PGCUTOVER_";
const SECTIONS: &[&str] = &["proxy", "auth", "blue", "green", "replication", "switchover", "aws"];

/// `PGCUTOVER_PROXY_LISTEN=…` sets `[proxy] listen`. The value is read as a TOML
/// value when it parses as one (numbers, booleans, arrays), else as a string.
/// Returns the key's path (`proxy.listen`) when the variable was an override.
pub(crate) fn apply_env_override(table: &mut toml::Table, name: &str, value: &str) -> Result<Option<String>, String> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(None);
    };
    let rest = rest.to_ascii_lowercase();
    let Some((section, key)) = SECTIONS
        .iter()
        .find_map(|s| rest.strip_prefix(s).and_then(|k| k.strip_prefix('_')).map(|k| (*s, k)))
    else {
        // Other PGCUTOVER_* variables (PGCUTOVER_CONFIG, PGCUTOVER_LOG_FORMAT, ...) belong to the CLI.
        return Ok(None);
    };
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = entry else {
        return Err(format!("[{section}] is not a table in the config file"));
    };
    section_table.insert(key.to_owned(), parsed);
    Ok(Some(format!("{section}.{key}")))
}
