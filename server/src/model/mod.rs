//! Records the rules work on and the store keeps, and the rules
//! themselves. No HTTP, no SQL.
//!
//! - [`records`]: stored records, their text-valued enums, pages.
//! - [`rules`]: what each write decides (`admit`, `judge_heartbeat`,
//!   `judge_rotation_write`) and the commits and outcomes around them.

mod records;
mod rules;

pub use records::*;
pub use rules::*;
