//! Center configs as the builder knows them: the ones it can see (`registry`: which ids and site numbers
//! are taken) and new ones written in the documented layout of `board-configs/example-center.ini`
//! (`render`), with the technician password asked for by `center new` (`password`).

pub mod password;
pub mod registry;
pub mod render;
