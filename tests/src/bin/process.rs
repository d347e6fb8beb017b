//! `cp-observer-lab-process`: a process of its own on a lab host, for the
//! tests that depend on which process connects (see
//! `lab::cluster::process`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    lab::cluster::process::serve(&args);
}
