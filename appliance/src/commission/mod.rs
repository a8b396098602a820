//! Commissioning a card for a center: the center config (`center.ini`) turned into the files of the
//! root filesystem. The image builder and `appliance center apply` on the card share this code, so a
//! card commissioned at first boot gets exactly the files a card built for that center has.
//!
//! - [`secrets`]: per-center secrets, how they are generated and kept (0600)
//! - [`context`]: the variables templates see: a center half and an image half
//! - [`render`]: the template engine, the templates installed in the image, writing only what changed
//! - [`apply`]: `appliance center apply`, the first-boot step, and its record for the status page
//! - [`overrides`]: `appliance config set|unset|show`, the card's local overrides

pub mod apply;
pub mod context;
pub mod overrides;
pub mod render;
pub mod secrets;
