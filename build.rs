//! With `--features ffmpeg`: compiles `src/codec/ffmpeg/shim.c` against the installed FFmpeg
//! headers and links libavcodec/libavutil, found by pkg-config. Without it: nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "ffmpeg")]
    ffmpeg::build();
}

#[cfg(feature = "ffmpeg")]
mod ffmpeg {
    use std::process::Command;

    const LIBS: [&str; 2] = ["libavcodec", "libavutil"];
    const INSTALL: &str = "the ffmpeg feature needs FFmpeg's development files and pkg-config: \
        apt-get install libavcodec-dev libavutil-dev pkg-config (or build without --features ffmpeg)";

    fn pkg_config(flag: &str) -> Vec<String> {
        let out = Command::new("pkg-config")
            .arg(flag)
            .args(LIBS)
            .output()
            .unwrap_or_else(|e| panic!("pkg-config: {e}; {INSTALL}"));
        if !out.status.success() {
            panic!(
                "pkg-config {flag} {}: {}; {INSTALL}",
                LIBS.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    pub fn build() {
        println!("cargo:rerun-if-changed=src/codec/ffmpeg/shim.c");
        let mut cc = cc::Build::new();
        cc.file("src/codec/ffmpeg/shim.c").warnings(true);
        for flag in pkg_config("--cflags") {
            if let Some(dir) = flag.strip_prefix("-I") {
                cc.include(dir);
            } else {
                cc.flag(&flag);
            }
        }
        cc.compile("tsbridge_ffmpeg_shim");
        for flag in pkg_config("--libs") {
            if let Some(dir) = flag.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            } else if let Some(lib) = flag.strip_prefix("-l") {
                println!("cargo:rustc-link-lib={lib}");
            }
        }
    }
}
