//! Source-tree rules that keep the code easy to enter: every Rust file
//! opens with a `//!` line saying what it owns.

use std::path::Path;

use tests::workspace_root;

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut missing = Vec::new();
    for dir in ["proto", "coordinator", "agent", "ctl", "tests"] {
        visit(&workspace_root().join(dir), &mut missing);
    }
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:#?}"
    );
}

fn visit(dir: &Path, missing: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            visit(&path, missing);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("readable file");
            if !text.starts_with("//!") {
                missing.push(path.display().to_string());
            }
        }
    }
}
