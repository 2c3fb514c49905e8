//! The TSM layer.

pub mod doe;
