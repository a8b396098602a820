//! Two-way sync of Moodle's database between the centers and the hub.
//!
//! Changes are captured from MariaDB's row binlog (no triggers, no per-table setup), the rules for each
//! table come from Moodle's own XMLDB schema, and concurrent edits merge column by column under a hybrid
//! logical clock, so every site ends with the same bytes.

pub mod agent;
pub mod apply;
pub mod bed;
pub mod bed_files;
pub mod bed_services;
pub mod bundle;
pub mod capture;
pub mod change;
pub mod files;
pub mod hlc;
pub mod http_link;
pub mod hub;
pub mod hub_server;
pub mod inbox;
pub mod merge;
pub mod policy;
pub mod record;
pub mod replay;
pub mod rules;
pub mod runner;
pub mod schema;
pub mod seed;
pub mod settings;
pub mod site;
pub mod store;
pub mod verify;
pub mod wire;
pub mod workload;
