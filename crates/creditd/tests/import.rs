//! `creditd models import` as a process: the diff it prints, its exit codes,
//! and that it writes through the same rules as the API.

use std::process::{Command, Output};

fn creditd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_creditd")).args(args).env_remove("CREDITD_CONFIG").output().expect("run creditd")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn models_import_prints_the_diff_and_needs_force_for_large_moves() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    let file = dir.path().join("prices.json");
    std::fs::write(
        &file,
        r#"{"m1": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05},
        "sample_spec": {"input_cost_per_token": 0}}"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let dry = creditd(&["models", "import", "--db", &db, "--format", "litellm", "--dry-run", file]);
    assert!(dry.status.success(), "{}", text(&dry));
    let out = text(&dry);
    assert!(out.contains("+ m1: new\n    cost_usd_per_mtok.input: - -> 3\n"), "{out}");
    assert!(out.contains("skipped sample_spec: not a model"), "{out}");
    assert!(out.contains("litellm (dry run, nothing written): 1 new, 0 changed"), "{out}");

    let done = creditd(&["models", "import", "--db", &db, "--format", "litellm", file]);
    assert!(done.status.success(), "{}", text(&done));
    assert!(text(&done).contains("+ m1 v1: new"), "{}", text(&done));

    std::fs::write(
        dir.path().join("prices.json"),
        r#"{"m1": {"input_cost_per_token": 3e-05, "output_cost_per_token": 1.6e-04}}"#,
    )
    .unwrap();
    let refused = creditd(&["models", "import", "--db", &db, "--format", "litellm", file]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let out = text(&refused);
    assert!(out.contains("! m1 v1: moves more than 10x"), "{out}");
    assert!(out.contains("nothing was written"), "{out}");

    let forced = creditd(&["models", "import", "--db", &db, "--format", "litellm", "--force", "--json", file]);
    assert!(forced.status.success(), "{}", text(&forced));
    let report: serde_json::Value = serde_json::from_slice(&forced.stdout).unwrap();
    assert_eq!(report["models"][0]["price_version"], 2);
    assert_eq!(
        report["models"][0]["changes"][1],
        serde_json::json!({"field": "cost_usd_per_mtok.output", "old": "15", "new": "160"})
    );
}
