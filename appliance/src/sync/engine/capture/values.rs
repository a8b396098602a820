//! Column values from binlog rows to our [`Value`].
//!
//! | MariaDB column                        | [`Value`]                                              |
//! |---------------------------------------|--------------------------------------------------------|
//! | TINYINT…BIGINT (signed)               | `Int`                                                  |
//! | TINYINT…BIGINT UNSIGNED               | `UInt` (signedness from TABLE_MAP's metadata)          |
//! | DECIMAL                               | `Decimal`, the exact text (`-12.50`)                   |
//! | FLOAT, DOUBLE                         | `Double` (a FLOAT widened exactly from f32)            |
//! | CHAR, VARCHAR, TEXT, BLOB, BINARY, JSON (a LONGTEXT in MariaDB), UUID, INET6 | `Bytes`, as stored (BINARY(n), UUID and INET6 re-padded to n bytes, see [`pad_binary`]) |
//! | DATE                                  | `Bytes`, text `YYYY-MM-DD`                             |
//! | DATETIME                              | `Bytes`, text `YYYY-MM-DD HH:MM:SS[.ffffff]`           |
//! | TIME                                  | `Bytes`, text `[-]H:MM:SS[.ffffff]`                    |
//! | TIMESTAMP                             | `Bytes`, Unix seconds as text (`1700000000[.ffffff]`): independent of any time zone |
//! | YEAR                                  | `UInt` (the year, 0 for 0000)                          |
//! | BIT, SET                              | `UInt` (the bits; SET's bit n is member n+1)           |
//! | ENUM                                  | `UInt` (the 1-based index of the member, 0 for '')     |
//! | NULL                                  | `Null`                                                 |
//!
//! Moodle's XMLDB only produces the first five rows; the others are for tables a plugin creates by hand.

use anyhow::{bail, Context, Result};
use mysql::binlog::events::TableMapEvent;
use mysql::binlog::row::BinlogRow;
use mysql::binlog::value::BinlogValue;
use mysql::consts::{ColumnFlags, ColumnType};

use crate::sync::engine::change::{Row, Value};

/// Converts one row image. Columns are named by TABLE_MAP's COLUMN_NAME metadata; without it (the server
/// not on `binlog_row_metadata=FULL`) the crate names them `@0`, `@1`…, which would be useless for
/// merging by name, so that is an error.
pub fn convert_row(mut row: BinlogRow, table_map: &TableMapEvent<'_>) -> Result<Row> {
    let table = table_map.table_name();
    let columns = row.columns();
    // Full row images carry every column, so row column i is table column i (its metadata's index).
    if columns.len() as u64 != table_map.columns_count() {
        bail!(
            "the binlog row of {table} has {} of its {} columns: MariaDB needs binlog_row_image=FULL",
            columns.len(),
            table_map.columns_count()
        );
    }
    let mut out = Row::new();
    for (i, column) in columns.iter().enumerate() {
        let name = column.name_str();
        if name == format!("@{i}") {
            bail!("the binlog row of {table} has no column names: MariaDB needs binlog_row_metadata=FULL");
        }
        let value = row
            .take(i)
            .with_context(|| format!("column {name} of {table} has no value in the binlog row"))?;
        let unsigned = column.flags().contains(ColumnFlags::UNSIGNED_FLAG);
        let mut value = convert(value, column.column_type(), unsigned)
            .with_context(|| format!("column {name} of {table}"))?;
        if column.column_type() == ColumnType::MYSQL_TYPE_STRING
            && column.character_set() == BINARY_CHARSET
        {
            pad_binary(&mut value, table_map.get_column_metadata(i));
        }
        out.insert(name.into_owned(), value);
    }
    Ok(out)
}

/// The `binary` character set's number: BINARY(n), and MariaDB's UUID and INET6 stored as such.
const BINARY_CHARSET: u16 = 63;

/// The server strips trailing pad bytes from fixed-length strings when it logs them (a replica pads
/// them back). For CHAR the pad is a space, and SELECT strips it too, so the text is right as it is;
/// for BINARY(n) the pad is 0x00 and part of the value, so put it back to the column's n bytes.
fn pad_binary(value: &mut Value, meta: Option<&[u8]>) {
    let (Value::Bytes(bytes), Some(&[byte0, byte1])) = (value, meta) else {
        return;
    };
    // MYSQL_TYPE_STRING metadata: real type and length share two bytes; lengths over 255 borrow two
    // bits of the type byte (the same decoding as the server's and mysql_common's).
    let (byte0, byte1) = (usize::from(byte0), usize::from(byte1));
    let length = if byte0 & 0x30 != 0x30 {
        byte1 | (((byte0 & 0x30) ^ 0x30) << 4)
    } else {
        byte1
    };
    if bytes.len() < length {
        bytes.resize(length, 0);
    }
}

fn convert(value: BinlogValue<'_>, ty: ColumnType, unsigned: bool) -> Result<Value> {
    match value {
        BinlogValue::Value(v) => from_mysql(v, ty, unsigned),
        // MySQL's binary JSON; MariaDB stores JSON as text and never sends this.
        BinlogValue::Jsonb(_) => match mysql::Value::try_from(value) {
            Ok(mysql::Value::Bytes(text)) => Ok(Value::Bytes(text)),
            Ok(other) => bail!("unexpected JSON value {other:?}"),
            Err(e) => bail!("cannot convert a binary JSON value: {e}"),
        },
        BinlogValue::JsonDiff(_) => {
            bail!(
                "partial JSON update in the binlog: set binlog_row_value_options='' on the server"
            )
        }
    }
}

/// The crate decodes the bytes; this picks our variant by the column's type.
fn from_mysql(v: mysql::Value, ty: ColumnType, unsigned: bool) -> Result<Value> {
    use mysql::Value as M;
    use ColumnType::*;
    Ok(match v {
        M::NULL => Value::Null,
        // The crate gives TIMESTAMP (old format) as seconds and ENUM as an index, both in an Int.
        M::Int(i) if ty == MYSQL_TYPE_TIMESTAMP => Value::Bytes(i.to_string().into_bytes()),
        // mysql_common 0.37 reads a signed MEDIUMINT's 3 bytes without extending the sign, so
        // -8388608 arrives as 8388608. Moodle's XMLDB int(5) and int(6) are MEDIUMINT: extend it here.
        M::Int(i) if ty == MYSQL_TYPE_INT24 && !unsigned && i > 0x7f_ffff => {
            Value::Int(i - 0x100_0000)
        }
        M::Int(i) if unsigned || ty == MYSQL_TYPE_ENUM => {
            Value::UInt(u64::try_from(i).with_context(|| format!("unsigned column holds {i}"))?)
        }
        M::Int(i) => Value::Int(i),
        M::UInt(u) => Value::UInt(u),
        M::Float(f) => Value::Double(f64::from(f)),
        M::Double(d) => Value::Double(d),
        M::Bytes(b) => match ty {
            MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => {
                Value::Decimal(String::from_utf8(b).context("DECIMAL text is not ASCII")?)
            }
            // The crate renders YEAR as 1900 + the stored byte, so 0000 comes out as "1900".
            MYSQL_TYPE_YEAR => {
                let text = String::from_utf8_lossy(&b);
                let year: u64 = text
                    .parse()
                    .with_context(|| format!("YEAR value {text:?}"))?;
                Value::UInt(if year == 1900 { 0 } else { year })
            }
            MYSQL_TYPE_BIT => Value::UInt(uint_from(&b, Endian::Big)?),
            MYSQL_TYPE_SET => Value::UInt(uint_from(&b, Endian::Little)?),
            _ => Value::Bytes(b),
        },
        M::Date(y, mo, d, h, mi, s, us) => {
            let date = format!("{y:04}-{mo:02}-{d:02}");
            let text = if matches!(ty, MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE) {
                date
            } else {
                format!("{date} {h:02}:{mi:02}:{s:02}{}", micros(us))
            };
            Value::Bytes(text.into_bytes())
        }
        M::Time(negative, days, h, mi, s, us) => {
            let sign = if negative { "-" } else { "" };
            let hours = u64::from(days) * 24 + u64::from(h);
            Value::Bytes(format!("{sign}{hours:02}:{mi:02}:{s:02}{}", micros(us)).into_bytes())
        }
    })
}

fn micros(us: u32) -> String {
    if us == 0 {
        String::new()
    } else {
        format!(".{us:06}")
    }
}

enum Endian {
    Big,
    Little,
}

fn uint_from(bytes: &[u8], endian: Endian) -> Result<u64> {
    if bytes.len() > 8 {
        bail!("{} bytes do not fit in 64 bits", bytes.len());
    }
    let mut v = 0u64;
    let mut push = |b: &u8| v = (v << 8) | u64::from(*b);
    match endian {
        Endian::Big => bytes.iter().for_each(&mut push),
        Endian::Little => bytes.iter().rev().for_each(&mut push),
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql::Value as M;
    use ColumnType::*;

    fn conv(v: M, ty: ColumnType, unsigned: bool) -> Value {
        from_mysql(v, ty, unsigned).unwrap()
    }

    #[test]
    fn integers_follow_the_column_signedness() {
        assert_eq!(conv(M::Int(-5), MYSQL_TYPE_LONG, false), Value::Int(-5));
        assert_eq!(
            conv(M::Int(4_294_967_295), MYSQL_TYPE_LONG, true),
            Value::UInt(4_294_967_295)
        );
        assert_eq!(
            conv(M::UInt(u64::MAX), MYSQL_TYPE_LONGLONG, true),
            Value::UInt(u64::MAX)
        );
        assert!(from_mysql(M::Int(-1), MYSQL_TYPE_LONG, true).is_err());
        // Signed MEDIUMINT as the crate hands it over (sign not extended).
        assert_eq!(
            conv(M::Int(0xff_ffff), MYSQL_TYPE_INT24, false),
            Value::Int(-1)
        );
        assert_eq!(
            conv(M::Int(0x80_0000), MYSQL_TYPE_INT24, false),
            Value::Int(-8_388_608)
        );
        assert_eq!(
            conv(M::Int(0x7f_ffff), MYSQL_TYPE_INT24, false),
            Value::Int(8_388_607)
        );
        assert_eq!(
            conv(M::Int(0xff_ffff), MYSQL_TYPE_INT24, true),
            Value::UInt(16_777_215)
        );
    }

    #[test]
    fn decimal_stays_exact_text_and_floats_widen() {
        assert_eq!(
            conv(M::Bytes(b"-12.50".to_vec()), MYSQL_TYPE_NEWDECIMAL, false),
            Value::Decimal("-12.50".into())
        );
        assert_eq!(
            conv(M::Float(0.5), MYSQL_TYPE_FLOAT, false),
            Value::Double(0.5)
        );
        assert_eq!(
            conv(M::Double(1e-300), MYSQL_TYPE_DOUBLE, false),
            Value::Double(1e-300)
        );
    }

    #[test]
    fn temporal_values_become_text() {
        assert_eq!(
            conv(M::Date(2024, 2, 29, 0, 0, 0, 0), MYSQL_TYPE_DATE, false),
            Value::Bytes(b"2024-02-29".to_vec())
        );
        assert_eq!(
            conv(
                M::Date(2024, 2, 29, 13, 5, 9, 500),
                MYSQL_TYPE_DATETIME2,
                false
            ),
            Value::Bytes(b"2024-02-29 13:05:09.000500".to_vec())
        );
        assert_eq!(
            conv(M::Time(true, 1, 2, 3, 4, 0), MYSQL_TYPE_TIME2, false),
            Value::Bytes(b"-26:03:04".to_vec())
        );
        assert_eq!(
            conv(M::Int(1_700_000_000), MYSQL_TYPE_TIMESTAMP, false),
            Value::Bytes(b"1700000000".to_vec())
        );
    }

    #[test]
    fn bits_sets_enums_and_years_become_numbers() {
        assert_eq!(
            conv(M::Bytes(vec![0x01, 0x02]), MYSQL_TYPE_BIT, false),
            Value::UInt(0x0102)
        );
        assert_eq!(
            conv(M::Bytes(vec![0x01, 0x02]), MYSQL_TYPE_SET, false),
            Value::UInt(0x0201)
        );
        assert_eq!(conv(M::Int(2), MYSQL_TYPE_ENUM, false), Value::UInt(2));
        assert_eq!(
            conv(M::Bytes(b"2031".to_vec()), MYSQL_TYPE_YEAR, false),
            Value::UInt(2031)
        );
        assert_eq!(
            conv(M::Bytes(b"1900".to_vec()), MYSQL_TYPE_YEAR, false),
            Value::UInt(0)
        );
        assert!(uint_from(&[0; 9], Endian::Big).is_err());
    }

    #[test]
    fn binary_values_are_padded_back_to_their_length() {
        // BINARY(4) (real type 0xfe, length 4) logged as "ab".
        let mut v = Value::Bytes(b"ab".to_vec());
        pad_binary(&mut v, Some(&[0xfe, 4]));
        assert_eq!(v, Value::Bytes(b"ab\0\0".to_vec()));
        // BINARY(255) (byte0 keeps 0x30 set) and a full value are left alone.
        let mut full = Value::Bytes(vec![1; 255]);
        pad_binary(&mut full, Some(&[0xfe, 255]));
        assert_eq!(full, Value::Bytes(vec![1; 255]));
        let mut v = Value::Null;
        pad_binary(&mut v, Some(&[0xfe, 4]));
        assert_eq!(v, Value::Null);
    }

    #[test]
    fn text_and_blobs_stay_bytes() {
        let emoji = "héllo 🎓".as_bytes().to_vec();
        assert_eq!(
            conv(M::Bytes(emoji.clone()), MYSQL_TYPE_VARCHAR, false),
            Value::Bytes(emoji)
        );
        assert_eq!(
            conv(M::Bytes(vec![0, 255]), MYSQL_TYPE_BLOB, false),
            Value::Bytes(vec![0, 255])
        );
        assert_eq!(conv(M::NULL, MYSQL_TYPE_BLOB, false), Value::Null);
    }
}
