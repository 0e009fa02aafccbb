//! Generation is deterministic and the drift check catches a spec change that
//! was not regenerated.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

fn codegen(dir: &Path, command: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oneprotect-codegen"))
        .current_dir(dir)
        .arg(command)
        .args(["--rustfmt-config"])
        .arg(workspace().join("rustfmt.toml"))
        .output()
        .expect("run oneprotect-codegen");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((
                    path.strip_prefix(dir).expect("prefix").display().to_string(),
                    std::fs::read(&path).expect("read"),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn checked_in_generated_code_is_current() {
    let (code, output) = codegen(&workspace(), "check");
    assert_eq!(code, 0, "{output}");
}

#[test]
fn an_unregenerated_spec_change_is_drift_and_make_generate_fixes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&workspace().join("specs"), &tmp.path().join("specs"));
    copy_dir(&workspace().join("generated/src"), &tmp.path().join("generated/src"));
    let (code, output) = codegen(tmp.path(), "check");
    assert_eq!(code, 0, "a faithful copy is not drift: {output}");

    let spec = tmp.path().join("specs/openapi.yaml");
    let text = std::fs::read_to_string(&spec).expect("read");
    let changed = text.replacen(
        "    HealthStatus:\n      type: object\n      additionalProperties: false\n      required: [status]\n      properties:\n",
        "    HealthStatus:\n      type: object\n      additionalProperties: false\n      required: [status]\n      properties:\n        version:\n          type: string\n",
        1,
    );
    assert_ne!(text, changed, "the fixture edit applies");
    std::fs::write(&spec, changed).expect("write");

    let (code, output) = codegen(tmp.path(), "check");
    assert_eq!(code, 3, "{output}");
    assert!(output.contains("drift: generated/src/types.rs"), "names the stale file: {output}");
    assert!(output.contains("make generate"), "says how to fix it: {output}");
    assert!(
        output.lines().any(|l| l.starts_with('+') && l.contains("version")),
        "shows the generated line that is missing: {output}"
    );
    assert!(output.contains("@@ line "), "as a short diff hunk: {output}");
    for untouched in ["events.rs", "server.rs", "lib.rs"] {
        assert!(
            !output.contains(&format!("drift: generated/src/{untouched}")),
            "a spec edit does not stale {untouched} through its header: {output}"
        );
    }

    let (code, output) = codegen(tmp.path(), "generate");
    assert_eq!(code, 0, "{output}");
    let first = snapshot(&tmp.path().join("generated/src"));
    assert!(
        String::from_utf8_lossy(&first.iter().find(|(p, _)| p == "types.rs").expect("types.rs").1)
            .contains("pub version:"),
        "the new property is generated"
    );
    let (code, output) = codegen(tmp.path(), "check");
    assert_eq!(code, 0, "{output}");

    let (code, output) = codegen(tmp.path(), "generate");
    assert_eq!(code, 0, "{output}");
    assert_eq!(first, snapshot(&tmp.path().join("generated/src")), "generating twice changes nothing");
}

#[test]
fn a_stray_file_in_generated_src_is_drift() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&workspace().join("specs"), &tmp.path().join("specs"));
    copy_dir(&workspace().join("generated/src"), &tmp.path().join("generated/src"));
    std::fs::write(tmp.path().join("generated/src/handwritten.rs"), "// edited by hand\n").expect("write");
    let (code, output) = codegen(tmp.path(), "check");
    assert_eq!(code, 3, "{output}");
    assert!(output.contains("handwritten.rs: not produced by the generator"), "{output}");
}

#[test]
fn a_second_contract_with_its_own_codegen_toml_is_valid_and_its_generated_code_is_current() {
    let out = Command::new(env!("CARGO_BIN_EXE_oneprotect-codegen"))
        .current_dir(workspace())
        .args(["--config", "codegen/tests/bookshelf/codegen.toml", "check"])
        .output()
        .expect("run oneprotect-codegen");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("4 operations, 5 schemas, 0 event types"), "{text}");
    let lib =
        std::fs::read_to_string(workspace().join("codegen/tests/bookshelf/src/lib.rs")).expect("lib.rs");
    assert!(!lib.contains("pub mod events"), "a contract without events has no events module");
    let server = std::fs::read_to_string(workspace().join("codegen/tests/bookshelf/src/server.rs"))
        .expect("server.rs");
    assert!(
        server.contains("pub type ProblemBody = types::Error;")
            && server.contains("\"https://bookshelf.example/problems/\"")
    );
}
