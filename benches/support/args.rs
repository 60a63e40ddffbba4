//! A bench's command line: `--name N` options after `cargo bench --bench
//! <name> --`. Included with `#[path = "support/args.rs"] mod args;`.

/// `--name N` from the command line, or `default` (absent or not a number).
pub fn value_of(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
