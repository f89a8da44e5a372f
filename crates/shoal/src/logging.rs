//! Logging: btsync.docker's `DEBUG` variable mapped onto `tracing` filters.
//!
//! btsync.docker used the `debug` npm module, whose `DEBUG` is a list of namespaces separated by
//! commas or spaces, with `*` as a wildcard and a leading `-` to exclude (`btsync:*,-btsync:ctl`).
//! shoal keeps that syntax and accepts both `btsync:` and `shoal:` prefixes. A component `X` turns on
//! debug events for the binary's module `shoal::X` and for the library crate `shoal_X`; `*` (or no
//! component) turns on all of shoal. Namespaces of other programs are ignored. Everything else logs
//! at `info`, which is quiet: one line per event that matters to an operator. `RUST_LOG`, when set,
//! replaces all of this with a plain `tracing` filter.

use tracing_subscriber::EnvFilter;

/// The `tracing` filter directives for a `DEBUG` value, on top of `base` (e.g. `info`).
pub fn directives(debug: &str, base: &str) -> String {
    let mut out = vec![base.to_owned()];
    for pattern in debug
        .split([',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (exclude, pattern) = match pattern.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let level = if exclude { base } else { "debug" };
        let component = if pattern == "*" {
            Some("*")
        } else {
            ["btsync", "shoal"].iter().find_map(|prefix| {
                let rest = pattern.strip_prefix(prefix)?;
                match rest {
                    "" => Some("*"),
                    _ => rest.strip_prefix(':'),
                }
            })
        };
        match component {
            None => {}
            Some("*") | Some("") => out.push(format!("shoal={level}")),
            Some(c) => {
                let c: String = c
                    .chars()
                    .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                    .collect();
                out.push(format!("shoal::{c}={level}"));
                out.push(format!("shoal_{c}={level}"));
            }
        }
    }
    out.join(",")
}

/// Installs the global subscriber. `base` is the level for everything `DEBUG` does not name.
/// Logs go to stderr so that stdout stays clean for `ctl path` and `ctl list` in scripts.
pub fn init(debug: &str, base: &str, with_time: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(rust_log) if !rust_log.is_empty() => EnvFilter::new(rust_log),
        _ => {
            // The NFS protocol library logs every connection at info: only when NFS is debugged.
            let mut d = directives(debug, base);
            if !d.contains("shoal_nfs=debug") && !d.contains("shoal=debug") {
                d.push_str(",nfs3_server=warn");
            }
            EnvFilter::new(d)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (only possible in tests) keeps the first subscriber: ignoring the error is right.
    let _ = if with_time {
        builder.try_init()
    } else {
        builder.without_time().try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn maps_debug_namespaces() {
        let check =
            |debug: &str, want: &str| assert_eq!(directives(debug, "info"), want, "{debug}");
        check("", "info");
        check("btsync:ctl", "info,shoal::ctl=debug,shoal_ctl=debug");
        check("shoal:*", "info,shoal=debug");
        check("*", "info,shoal=debug");
        check("btsync", "info,shoal=debug");
        check("express:*", "info");
        check(
            "shoal:*,-shoal:ctl",
            "info,shoal=debug,shoal::ctl=info,shoal_ctl=info",
        );
        check(
            "shoal:config btsync:daemon",
            "info,shoal::config=debug,shoal_config=debug,shoal::daemon=debug,shoal_daemon=debug",
        );
        check("shoal:a=b", "info,shoal::a_b=debug,shoal_a_b=debug");
    }
}
