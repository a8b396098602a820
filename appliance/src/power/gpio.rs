//! A mains-present line read through the Linux GPIO character device (`/dev/gpiochipN`), for boards rppal
//! does not cover (Odroid). Uses the kernel's v1 line-handle ABI, which every kernel these boards run has.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::power::{PowerSource, Reading};

const HANDLES_MAX: usize = 64;
const REQUEST_INPUT: u32 = 1 << 0;
const REQUEST_ACTIVE_LOW: u32 = 1 << 2;

#[repr(C)]
struct HandleRequest {
    line_offsets: [u32; HANDLES_MAX],
    flags: u32,
    default_values: [u8; HANDLES_MAX],
    consumer_label: [u8; 32],
    lines: u32,
    fd: i32,
}

#[repr(C)]
struct HandleData {
    values: [u8; HANDLES_MAX],
}

nix::ioctl_readwrite!(get_line_handle, 0xB4, 0x03, HandleRequest);
nix::ioctl_readwrite!(get_line_values, 0xB4, 0x08, HandleData);

/// One input line that is active while mains is present (set `active_low` when the sensor pulls the
/// line low on mains).
pub struct GpioLine {
    pub chip: PathBuf,
    pub line: u32,
    pub active_low: bool,
    handle: Option<OwnedFd>,
}

impl GpioLine {
    pub fn new(chip: PathBuf, line: u32, active_low: bool) -> Self {
        GpioLine {
            chip,
            line,
            active_low,
            handle: None,
        }
    }

    fn open(&self) -> Result<OwnedFd> {
        let chip = File::open(&self.chip)
            .with_context(|| format!("cannot open GPIO chip {}", self.chip.display()))?;
        let mut req = HandleRequest {
            line_offsets: [0; HANDLES_MAX],
            flags: REQUEST_INPUT
                | if self.active_low {
                    REQUEST_ACTIVE_LOW
                } else {
                    0
                },
            default_values: [0; HANDLES_MAX],
            consumer_label: [0; 32],
            lines: 1,
            fd: -1,
        };
        req.line_offsets[0] = self.line;
        req.consumer_label[..5].copy_from_slice(b"kituo");
        // SAFETY: `req` is the kernel's struct gpiohandle_request, laid out with repr(C), and lives across
        // the call; the kernel writes only its `fd` field.
        unsafe { get_line_handle(chip.as_raw_fd(), &mut req) }.with_context(|| {
            format!("cannot claim line {} of {}", self.line, self.chip.display())
        })?;
        // SAFETY: on success the kernel returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(req.fd) })
    }
}

impl PowerSource for GpioLine {
    fn name(&self) -> String {
        format!("gpio:{}:{}", self.chip.display(), self.line)
    }

    fn read(&mut self) -> Result<Reading> {
        if self.handle.is_none() {
            self.handle = Some(self.open()?);
        }
        let Some(handle) = &self.handle else {
            anyhow::bail!("no GPIO handle");
        };
        let mut data = HandleData {
            values: [0; HANDLES_MAX],
        };
        // SAFETY: `data` is the kernel's struct gpiohandle_data and outlives the call.
        let result = unsafe { get_line_values(handle.as_raw_fd(), &mut data) };
        if let Err(e) = result {
            self.handle = None;
            return Err(e).with_context(|| format!("cannot read {}", self.name()));
        }
        Ok(Reading {
            source: self.name(),
            on_mains: Some(data.values[0] != 0),
            ..Reading::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        // sizeof(struct gpiohandle_request) and sizeof(struct gpiohandle_data) from <linux/gpio.h>.
        assert_eq!(std::mem::size_of::<HandleRequest>(), 364);
        assert_eq!(std::mem::size_of::<HandleData>(), 64);
    }

    #[test]
    fn missing_chip_names_it() {
        let mut line = GpioLine::new("/dev/gpiochip-none".into(), 3, false);
        let e = format!("{:#}", line.read().unwrap_err());
        assert!(e.contains("/dev/gpiochip-none"), "{e}");
    }
}
