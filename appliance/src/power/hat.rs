//! Raspberry Pi UPS HATs: the Geekworm X728/X1200 family (mains sensor on a GPIO, MAX17040/MAX17048 fuel
//! gauge at I2C 0x36) and the Waveshare UPS HAT (INA219 power monitor at 0x42 or 0x43, no fuel gauge, so
//! the charge is estimated from the battery voltage).
//!
//! Register decoding is pure functions checked against the datasheets; the bus sits behind [`Registers`]
//! so that the decoding and the source logic can be tested without a board.

use anyhow::{Context, Result};

use crate::power::{PowerSource, Reading};

/// MAX1704x VCELL register (16 bits, MSB first).
pub const MAX1704X_VCELL: u8 = 0x02;
/// MAX1704x SOC register: high byte whole percent, low byte 1/256 percent.
pub const MAX1704X_SOC: u8 = 0x04;
/// INA219 shunt voltage register (signed, 10 uV per LSB).
pub const INA219_SHUNT: u8 = 0x01;
/// INA219 bus voltage register (bits 15..3, 4 mV per LSB).
pub const INA219_BUS: u8 = 0x02;

/// Cell voltage from a MAX1704x VCELL register. The MAX17048 datasheet gives 78.125 uV per LSB over all 16
/// bits; the MAX17040/43 give 1.25 mV per LSB over the upper 12 bits, which is the same number.
pub fn max1704x_volts(raw: u16) -> f32 {
    f32::from(raw) * 78.125e-6
}

/// State of charge from a MAX1704x SOC register, in percent (the gauge may report a little over 100).
pub fn max1704x_percent(raw: u16) -> f32 {
    f32::from(raw >> 8) + f32::from(raw & 0xff) / 256.0
}

/// Bus voltage from an INA219 bus voltage register: bits 15..3 in units of 4 mV (bits 1 and 0 are the
/// conversion-ready and overflow flags).
pub fn ina219_bus_volts(raw: u16) -> f32 {
    f32::from(raw >> 3) * 0.004
}

/// Shunt voltage in millivolts from an INA219 shunt register (two's complement, 10 uV per LSB at any PGA
/// setting). Negative means current flows out of the battery.
pub fn ina219_shunt_millivolts(raw: u16) -> f32 {
    f32::from(raw as i16) * 0.01
}

/// A rough charge estimate from the voltage of `cells` Li-ion cells in series: linear from 3.0 V (empty)
/// to 4.2 V (full) per cell, as Waveshare's own scripts do. Good enough to decide when to shut down; the
/// runtime is not estimated.
pub fn li_ion_percent(volts: f32, cells: u8) -> f32 {
    let per_cell = volts / f32::from(cells.max(1));
    ((per_cell - 3.0) / 1.2 * 100.0).clamp(0.0, 100.0)
}

/// Below this shunt voltage the battery is discharging: the HAT runs the board from the battery. 5 mV is
/// 50 mA through the Waveshare HAT's 0.1 ohm shunt, well below what a Pi draws.
const DISCHARGE_SHUNT_MILLIVOLTS: f32 = -5.0;

/// Register access on one I2C bus.
pub trait Registers: Send {
    /// Reads a 16-bit register whose device sends the most significant byte first.
    fn read_u16(&mut self, address: u8, register: u8) -> Result<u16>;
}

/// The mains sensor pin of a HAT.
pub trait MainsPin: Send {
    fn mains_present(&mut self) -> Result<bool>;
}

/// Geekworm X728 / X1200 and other boards with a MAX1704x gauge and an optional mains pin.
pub struct FuelGaugeHat<R, P> {
    pub registers: R,
    pub address: u8,
    pub mains: Option<P>,
}

impl<R: Registers, P: MainsPin> PowerSource for FuelGaugeHat<R, P> {
    fn name(&self) -> String {
        format!("max1704x@{:#04x}", self.address)
    }

    fn read(&mut self) -> Result<Reading> {
        let volts = max1704x_volts(self.registers.read_u16(self.address, MAX1704X_VCELL)?);
        let percent = max1704x_percent(self.registers.read_u16(self.address, MAX1704X_SOC)?);
        let on_mains = match &mut self.mains {
            Some(pin) => Some(pin.mains_present()?),
            None => None,
        };
        Ok(Reading {
            source: self.name(),
            on_mains,
            charge_percent: Some(percent.min(100.0)),
            battery_volts: Some(volts),
            ..Reading::default()
        })
    }
}

/// Waveshare UPS HAT: an INA219 on the battery line.
pub struct Ina219Hat<R> {
    pub registers: R,
    pub address: u8,
    pub cells: u8,
}

impl<R: Registers> PowerSource for Ina219Hat<R> {
    fn name(&self) -> String {
        format!("ina219@{:#04x}", self.address)
    }

    fn read(&mut self) -> Result<Reading> {
        let volts = ina219_bus_volts(self.registers.read_u16(self.address, INA219_BUS)?);
        let shunt = ina219_shunt_millivolts(self.registers.read_u16(self.address, INA219_SHUNT)?);
        let discharging = shunt < DISCHARGE_SHUNT_MILLIVOLTS;
        Ok(Reading {
            source: self.name(),
            on_mains: Some(!discharging),
            charging: Some(shunt > -DISCHARGE_SHUNT_MILLIVOLTS),
            charge_percent: Some(li_ion_percent(volts, self.cells)),
            battery_volts: Some(volts),
            ..Reading::default()
        })
    }
}

/// The Raspberry Pi's I2C controller through rppal.
pub struct RppalI2c(rppal::i2c::I2c);

impl RppalI2c {
    pub fn open(bus: u8) -> Result<Self> {
        let i2c = rppal::i2c::I2c::with_bus(bus)
            .with_context(|| format!("cannot open I2C bus {bus} (is dtparam=i2c_arm=on set?)"))?;
        Ok(RppalI2c(i2c))
    }
}

impl Registers for RppalI2c {
    fn read_u16(&mut self, address: u8, register: u8) -> Result<u16> {
        self.0
            .set_slave_address(u16::from(address))
            .with_context(|| format!("I2C address {address:#04x}"))?;
        // SMBus words are sent least significant byte first; these chips send the most significant first.
        self.0.smbus_read_word_swapped(register).with_context(|| {
            format!("reading register {register:#04x} of I2C device {address:#04x}")
        })
    }
}

/// A Raspberry Pi GPIO input through rppal.
pub struct RppalPin {
    pin: rppal::gpio::InputPin,
    high_means_present: bool,
}

impl RppalPin {
    pub fn open(bcm: u8, high_means_present: bool) -> Result<Self> {
        let gpio = rppal::gpio::Gpio::new().context("cannot open the Raspberry Pi GPIO")?;
        let pin = gpio
            .get(bcm)
            .with_context(|| format!("cannot claim GPIO {bcm}"))?
            .into_input();
        Ok(RppalPin {
            pin,
            high_means_present,
        })
    }
}

impl MainsPin for RppalPin {
    fn mains_present(&mut self) -> Result<bool> {
        Ok(self.pin.is_high() == self.high_means_present)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn max17048_datasheet_values() {
        // 0xD000 = 53248 LSB * 78.125 uV = 4.16 V.
        assert!(close(max1704x_volts(0xD000), 4.16));
        assert!(close(max1704x_volts(0xFFFF), 5.1199));
        // MAX17040: 12-bit 0xA8C (2700) * 1.25 mV = 3.375 V, left-aligned in the register.
        assert!(close(max1704x_volts(0xA8C0), 3.375));
        // SOC: 0x3A80 = 58 + 128/256 = 58.5 %.
        assert!(close(max1704x_percent(0x3A80), 58.5));
        assert!(close(max1704x_percent(0x6400), 100.0));
        assert!(close(max1704x_percent(0x0001), 1.0 / 256.0));
    }

    #[test]
    fn ina219_datasheet_values() {
        // Datasheet example: bus register 0x5D98 holds 0xBB3 = 2995 -> 11.98 V (flags in bits 1..0).
        assert!(close(ina219_bus_volts(0x5D98), 11.98));
        assert!(close(ina219_bus_volts(0x5D9B), 11.98));
        assert!(close(ina219_bus_volts((8400 / 4) << 3), 8.4));
        // Shunt: 0x7D00 = 32000 * 10 uV = 320 mV full scale; 0x8300 = -32000 -> -320 mV.
        assert!(close(ina219_shunt_millivolts(0x7D00), 320.0));
        assert!(close(ina219_shunt_millivolts(0x8300), -320.0));
        assert!(close(ina219_shunt_millivolts(0xFFF6), -0.1));
    }

    #[test]
    fn li_ion_estimate() {
        assert!(close(li_ion_percent(8.4, 2), 100.0));
        assert!(close(li_ion_percent(7.2, 2), 50.0));
        assert!(close(li_ion_percent(5.0, 2), 0.0));
        assert!(close(li_ion_percent(3.6, 1), 50.0));
    }

    struct FakeBus(HashMap<(u8, u8), u16>);
    impl Registers for FakeBus {
        fn read_u16(&mut self, address: u8, register: u8) -> Result<u16> {
            self.0
                .get(&(address, register))
                .copied()
                .ok_or_else(|| anyhow::anyhow!("no device at {address:#x}"))
        }
    }
    struct FakePin(bool);
    impl MainsPin for FakePin {
        fn mains_present(&mut self) -> Result<bool> {
            Ok(self.0)
        }
    }

    #[test]
    fn x728_reading() {
        let bus = FakeBus(HashMap::from([
            ((0x36, 0x02), 0xD000),
            ((0x36, 0x04), 0x1400),
        ]));
        let mut hat = FuelGaugeHat {
            registers: bus,
            address: 0x36,
            mains: Some(FakePin(false)),
        };
        let r = hat.read().unwrap();
        assert_eq!(r.on_mains, Some(false));
        assert_eq!(r.charge_percent, Some(20.0));
        assert!(hat.read().is_ok());
        let mut absent = FuelGaugeHat::<_, FakePin> {
            registers: FakeBus(HashMap::new()),
            address: 0x36,
            mains: None,
        };
        assert!(absent.read().is_err());
    }

    #[test]
    fn waveshare_reading() {
        // 7.2 V on the bus, -30 mV on the shunt: discharging at half charge.
        let bus = FakeBus(HashMap::from([
            ((0x42, 0x02), (7200 / 4) << 3),
            ((0x42, 0x01), (-3000i16) as u16),
        ]));
        let mut hat = Ina219Hat {
            registers: bus,
            address: 0x42,
            cells: 2,
        };
        let r = hat.read().unwrap();
        assert_eq!(r.on_mains, Some(false));
        assert!(close(r.charge_percent.unwrap(), 50.0));
    }
}
