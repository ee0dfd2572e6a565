//! Compiles the kernel programs with clang when it is present; otherwise uses the committed
//! prebuilt object, so `cargo build` works on a machine without clang. `ebpf/build-object.sh`
//! refreshes the committed object with the same command line, and CI fails when it is stale.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &["bpf/fastproxy.bpf.c", "bpf/fastproxy_abi.h"];
const CLANG_CANDIDATES: &[&str] = &["clang-19", "clang"];

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-changed=prebuilt/fastproxy.bpf.o");
    println!("cargo:rerun-if-env-changed=FASTPROXY_EBPF_PREBUILT");
    println!("cargo:rerun-if-env-changed=FASTPROXY_CLANG");

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("fastproxy.bpf.o");
    let prebuilt = manifest.join("prebuilt/fastproxy.bpf.o");

    let force_prebuilt = env::var_os("FASTPROXY_EBPF_PREBUILT").is_some_and(|v| v == "1");
    let clang = if force_prebuilt { None } else { find_clang() };
    match clang {
        Some(clang) => compile(&clang, &manifest.join("bpf"), &out),
        None => {
            std::fs::copy(&prebuilt, &out).unwrap_or_else(|e| {
                panic!(
                    "no clang and no prebuilt object at {}: {e}",
                    prebuilt.display()
                )
            });
        }
    }
}

fn find_clang() -> Option<String> {
    if let Some(explicit) = env::var_os("FASTPROXY_CLANG") {
        return Some(explicit.to_string_lossy().into_owned());
    }
    CLANG_CANDIDATES
        .iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|name| (*name).to_owned())
}

/// Must stay identical to the command in build-object.sh (the staleness check compares bytes).
fn compile(clang: &str, bpf_dir: &Path, out: &Path) {
    let status = Command::new(clang)
        .current_dir(bpf_dir)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg(format!("-ffile-prefix-map={}=.", bpf_dir.display()))
        .args(["-c", "fastproxy.bpf.c", "-o"])
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    assert!(
        status.success(),
        "{clang} failed to compile the kernel programs"
    );
}
