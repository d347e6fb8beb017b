//! The kernel programs without a network: crafted packets ([`packets`]) for
//! `BPF_PROG_TEST_RUN`.

pub mod packets;
