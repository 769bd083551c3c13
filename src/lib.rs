//! x

pub mod intent;
pub mod kserve;
