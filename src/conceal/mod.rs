//! The concealment engine under both output masking (`mask`) and blind mode (`blind`): the
//! streaming multi-pattern byte replacer, and the encoded forms of a value it is given.

pub mod forms;
pub mod replace;
