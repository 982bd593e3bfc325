//! The consortium certificate authority of SCOLD.
pub mod cli;
