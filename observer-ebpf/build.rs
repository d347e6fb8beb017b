//! Linker options for the kernel object (bpf-linker).

fn main() {
    // Host builds (clippy) link with the host's linker: nothing to say.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    // bpf-linker asks LLVM to turn every memset and memmove into a call to
    // a byte loop (`--bpf-expand-memcpy-in-order`). Such a call costs a BPF
    // subprogram and, on 5.10 and 6.1, 32 bytes of every call chain's
    // 512-byte stack budget even though it uses none. Without the option,
    // LLVM writes the few stores inline.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
