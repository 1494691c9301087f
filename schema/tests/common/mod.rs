//! What the schema's property-test files share.

use proptest::test_runner::Config;

/// Cases per property: 512 by default, 20 000 with `LEGATO_SOAK=1`, or `PROPTEST_CASES`.
pub fn config() -> Config {
    let soak = std::env::var("LEGATO_SOAK").is_ok_and(|v| v == "1");
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(if soak { 20_000 } else { 512 });
    Config {
        cases,
        // Rejections only come from `prop_assume!`, which these properties do not use.
        max_global_rejects: 0,
        ..Config::default()
    }
}
