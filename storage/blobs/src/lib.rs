//! The real [`Blobs`](switchboard_storage::Blobs) stores: [`LocalBlobs`],
//! a folder the node serves itself (the embedded default), and [`S3Blobs`]
//! for S3 and S3-compatible stores. Only the binary and tests compile this
//! crate (and `aws-sdk-s3` with it).

mod local;
mod s3;

pub use local::{BLOB_PATH, LocalBlobs};
pub use s3::{S3Blobs, S3Options};
