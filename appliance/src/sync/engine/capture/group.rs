//! Turns the event stream into complete transactions ("event groups" in MariaDB's words).
//!
//! A MariaDB group starts with a GTID event and ends with XID (InnoDB), a `COMMIT` query (other engines),
//! or, for a standalone group (one DDL statement), with that statement. Positions move only at group
//! ends, so a stream cut inside a group leaves the group for the next read.

use anyhow::{bail, Context, Result};
use mysql::binlog::events::{BinlogEventHeader, Event, EventData, RowsEventData};
use mysql::BinlogStream;

use crate::sync::engine::capture::mariadb::{self, GtidEvent};
use crate::sync::engine::capture::values::convert_row;
use crate::sync::engine::capture::{BinlogPos, CapturedTxn, RowChange};
use crate::sync::engine::change::RowKind;

/// The group being read.
struct Group {
    gtid: Option<String>,
    standalone: bool,
    prepared_xa: bool,
    /// Written by a `skip_replication` session: the sync engine applying another site's changes.
    skip: bool,
    rows: Vec<RowChange>,
}

impl Group {
    fn new(gtid: Option<String>, skip: bool) -> Group {
        Group {
            gtid,
            standalone: false,
            prepared_xa: false,
            skip,
            rows: Vec::new(),
        }
    }
}

pub struct Assembler<'a> {
    database: &'a str,
    /// The binlog file the stream is in.
    file: String,
    /// Just after the last complete group (or the start of a file reached by rotation).
    resume: BinlogPos,
    open: Option<Group>,
    /// MariaDB opens the stream with an artificial Rotate sent before the format description, so the
    /// crate does not yet know that events carry a checksum and leaves its 4 bytes in the file name.
    /// That Rotate only repeats the requested file, so it is skipped.
    seen_format: bool,
}

impl<'a> Assembler<'a> {
    pub fn new(database: &'a str, start: BinlogPos) -> Assembler<'a> {
        Assembler {
            database,
            file: start.file.clone(),
            resume: start,
            open: None,
            seen_format: false,
        }
    }

    pub fn resume(&self) -> &BinlogPos {
        &self.resume
    }

    /// Takes the next event; returns a transaction when this event completed one that changed rows of
    /// our database.
    pub fn feed(&mut self, event: &Event, stream: &BinlogStream) -> Result<Option<CapturedTxn>> {
        let header = event.header();
        let skip = header.flags_raw() & mariadb::SKIP_REPLICATION_F != 0;
        match header.event_type_raw() {
            mariadb::GTID_EVENT => {
                let gtid = GtidEvent::parse(event.data(), header.server_id())?;
                // A group still open here never reached its commit (a crash cut it): drop it.
                let mut group = Group::new(Some(gtid.to_string()), skip);
                group.standalone = gtid.standalone();
                group.prepared_xa = gtid.prepared_xa();
                self.open = Some(group);
                return Ok(None);
            }
            t @ mariadb::FIRST_COMPRESSED_EVENT..=mariadb::LAST_COMPRESSED_EVENT => bail!(
                "compressed binlog event (type {t}) at {}: set log_bin_compress=OFF on the server",
                self.here(&header)
            ),
            _ => {}
        }
        let data = event
            .read_data()
            .with_context(|| format!("cannot decode the binlog event at {}", self.here(&header)))?;
        // None: a type the crate does not know, i.e. MariaDB's ANNOTATE_ROWS, BINLOG_CHECKPOINT,
        // GTID_LIST, START_ENCRYPTION: nothing for us.
        let Some(data) = data else {
            self.step_over(&header);
            return Ok(None);
        };
        match data {
            EventData::FormatDescriptionEvent(_) => {
                self.seen_format = true;
                self.step_over(&header);
            }
            EventData::RotateEvent(rotate) if self.seen_format => {
                self.file = rotate.name().into_owned();
                // Groups never span files: one left open was cut by a crash and will not end.
                self.open = None;
                // A file's first event is at offset 4 (after the magic number), whatever a rotate says.
                self.resume = BinlogPos::new(self.file.clone(), rotate.position().max(4));
            }
            EventData::XidEvent(_) => return self.finish(&header),
            EventData::QueryEvent(query) => {
                let sql = query.query();
                let sql = sql.trim();
                if sql.eq_ignore_ascii_case("BEGIN") {
                    self.open.get_or_insert_with(|| Group::new(None, skip));
                } else if sql.eq_ignore_ascii_case("COMMIT") {
                    return self.finish(&header);
                } else if sql.eq_ignore_ascii_case("ROLLBACK") {
                    // Only a transaction that also touched a non-transactional table is logged and
                    // then rolled back; Moodle's tables are InnoDB, so its rows are dropped.
                    self.open = None;
                    self.advance(&header)?;
                } else if self.open.as_ref().is_none_or(|g| g.standalone) {
                    // DDL: it ends its own group (or stands outside any).
                    return self.finish(&header);
                }
            }
            EventData::XaPrepareLogEvent(_) => {
                if self.open.as_ref().is_some_and(|g| !g.rows.is_empty()) {
                    bail!(
                        "XA transaction on {} at {}: sync capture does not support XA",
                        self.database,
                        self.here(&header)
                    );
                }
                self.open = None;
                self.advance(&header)?;
            }
            EventData::RowsEvent(rows) => self.rows(&rows, skip, stream, &header)?,
            _ => self.step_over(&header),
        }
        Ok(None)
    }

    /// An event outside any group (BINLOG_CHECKPOINT, GTID_LIST, a format description…): move past it,
    /// so that a reader that has caught up sits at the server's end. Only forward: the format
    /// description MariaDB resends when a dump starts mid-file carries its own, earlier, position.
    fn step_over(&mut self, header: &BinlogEventHeader) {
        let end = u64::from(header.log_pos());
        if self.open.is_none() && self.seen_format && end > self.resume.pos {
            self.resume.pos = end;
        }
    }

    fn rows(
        &mut self,
        rows: &RowsEventData<'_>,
        skip: bool,
        stream: &BinlogStream,
        header: &BinlogEventHeader,
    ) -> Result<()> {
        let here = self.here(header);
        // MariaDB always opens a group with a GTID event; a server without one opens it with BEGIN.
        let group = self.open.get_or_insert_with(|| Group::new(None, skip));
        if skip || group.skip {
            return Ok(());
        }
        let Some(table_map) = stream.get_tme(rows.table_id()) else {
            bail!(
                "rows event for table id {} without its TABLE_MAP at {here}",
                rows.table_id()
            );
        };
        if table_map.database_name() != self.database {
            return Ok(());
        }
        let table = table_map.table_name().into_owned();
        let kind = match rows {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => {
                RowKind::Insert
            }
            RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => {
                RowKind::Update
            }
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => {
                RowKind::Delete
            }
            RowsEventData::PartialUpdateRowsEvent(_) => {
                bail!("partial row update at {here}: set binlog_row_value_options='' on the server")
            }
        };
        for row in rows.rows(table_map) {
            let (before, after) =
                row.with_context(|| format!("cannot decode a row of {table} at {here}"))?;
            let before = before.map(|r| convert_row(r, table_map)).transpose()?;
            let after = after.map(|r| convert_row(r, table_map)).transpose()?;
            group.rows.push(RowChange {
                table: table.clone(),
                kind,
                before,
                after,
            });
        }
        Ok(())
    }

    /// The group ends with this event.
    fn finish(&mut self, header: &BinlogEventHeader) -> Result<Option<CapturedTxn>> {
        let end = self.advance(header)?;
        let Some(group) = self.open.take() else {
            return Ok(None);
        };
        if group.skip || group.rows.is_empty() {
            return Ok(None);
        }
        if group.prepared_xa {
            bail!(
                "XA transaction on {} ending at {end}: sync capture does not support XA",
                self.database
            );
        }
        Ok(Some(CapturedTxn {
            gtid: group.gtid,
            end,
            timestamp: header.timestamp(),
            rows: group.rows,
        }))
    }

    /// Moves the resume position to the end of this event.
    fn advance(&mut self, header: &BinlogEventHeader) -> Result<BinlogPos> {
        if header.log_pos() == 0 {
            bail!(
                "binlog event of type {} in {} has no position",
                header.event_type_raw(),
                self.file
            );
        }
        self.resume = BinlogPos::new(self.file.clone(), u64::from(header.log_pos()));
        Ok(self.resume.clone())
    }

    /// Where an event sits, for messages: its end, as the header gives it.
    fn here(&self, header: &BinlogEventHeader) -> String {
        format!(
            "{}:{} (event type {})",
            self.file,
            header.log_pos(),
            header.event_type_raw()
        )
    }
}
