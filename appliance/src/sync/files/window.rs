//! A daily time window in the appliance's local time, e.g. `22:00-06:00` for bulk transfers at night.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes after local midnight; `start > end` wraps past midnight.
    start: u16,
    end: u16,
}

fn minutes(text: &str) -> Result<u16> {
    let (h, m) = text
        .trim()
        .split_once(':')
        .with_context(|| format!("'{text}' is not HH:MM"))?;
    let (h, m): (u16, u16) = (
        h.parse()
            .with_context(|| format!("'{text}' is not HH:MM"))?,
        m.parse()
            .with_context(|| format!("'{text}' is not HH:MM"))?,
    );
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        bail!("'{text}' is not a time of day");
    }
    Ok(h * 60 + m)
}

impl Window {
    /// `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<Window> {
        let (a, b) = text
            .split_once('-')
            .with_context(|| format!("'{text}': expected HH:MM-HH:MM, e.g. 22:00-06:00"))?;
        let w = Window {
            start: minutes(a)?,
            end: minutes(b)?,
        };
        if w.start == w.end {
            bail!("'{text}' is empty; leave the key empty for no window");
        }
        Ok(w)
    }

    pub fn contains(&self, minute_of_day: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start || minute_of_day < self.end
        }
    }

    /// Whether the appliance's local clock is inside the window now.
    pub fn is_open_now(&self) -> bool {
        self.contains(local_minute_of_day())
    }
}

/// Minutes since local midnight, by the C library's idea of the time zone (`/etc/localtime`, `TZ`).
pub fn local_minute_of_day() -> u16 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as nix::libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r only writes the tm we own; a zeroed tm is a valid value of the type.
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !nix::libc::localtime_r(&now, &mut tm).is_null() };
    if !ok {
        // No zone information: UTC is the best guess.
        return ((now / 60) % 1440) as u16;
    }
    (tm.tm_hour * 60 + tm.tm_min) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_wrap_past_midnight() {
        let night = Window::parse("22:00-06:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(5 * 60 + 59));
        assert!(!night.contains(6 * 60) && !night.contains(12 * 60));
        let lunch = Window::parse("12:30-14:00").unwrap();
        assert!(lunch.contains(12 * 60 + 30) && !lunch.contains(14 * 60));
        for bad in ["22:00", "25:00-01:00", "10:00-10:00", "ab:00-01:00"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
        assert!(local_minute_of_day() < 1440);
    }
}
