//! The only way builder writes files: `images::fsutil::write_atomic` (temp file in the same
//! folder with the final mode, fsync, rename, fsync the folder).

pub use images::fsutil::write_atomic;
