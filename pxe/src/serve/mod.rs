//! Network servers. Each `run` function owns only I/O; protocol decisions live in
//! [`crate::proto`].

pub mod tftp;
