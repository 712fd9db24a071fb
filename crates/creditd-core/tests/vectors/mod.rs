//! Loads the spec's worked examples. The repo keeps a copy in `spec/vectors/`
//! so a clone tests on its own; where the shared spec sits beside the repo
//! (as in CI), the copy must equal it, so the two never drift apart.

use std::path::PathBuf;

pub fn load(name: &str) -> serde_json::Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let copy = std::fs::read_to_string(root.join("spec/vectors").join(name)).expect("spec/vectors copy in the repo");
    if let Ok(shared) = std::fs::read_to_string(root.join("../shared/spec/vectors").join(name)) {
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&shared).unwrap(),
            serde_json::from_str::<serde_json::Value>(&copy).unwrap(),
            "spec/vectors/{name} differs from ../shared/spec/vectors/{name}: copy the new one in"
        );
    }
    serde_json::from_str(&copy).expect("vector JSON")
}
