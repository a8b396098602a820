//! The merge rules, free of any database: every site runs exactly these decisions on the same inputs,
//! which is why all sites end with the same bytes whatever order changes arrive in.
//!
//! - A column takes the value of the write with the greatest [`Stamp`] (clock, then site id).
//! - Only columns a site changed carry its stamp, so concurrent edits of different columns both survive.
//! - Columns Moodle writes together (a group: `timemodified` with `usermodified`) are compared as one:
//!   the group's stamp is the greatest of its columns', and a write wins all of them or none.
//! - Delete beats any update (the tombstone), whatever the clocks say.
//! - Two rows created at two sites with the same unique key: the earlier-born row keeps its id, the other
//!   id becomes an alias of it, and the later row's edits merge into it column by column.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::sync::engine::change::Row;
use crate::sync::engine::clock::Stamp;

/// Who last wrote each column of a row, and when the row was born.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RowClock {
    pub born: Stamp,
    /// Columns written since birth; a column not listed was last written at birth.
    pub cols: BTreeMap<String, Stamp>,
}

impl RowClock {
    pub fn born(stamp: Stamp) -> RowClock {
        RowClock {
            born: stamp,
            cols: BTreeMap::new(),
        }
    }

    pub fn column(&self, name: &str) -> Stamp {
        self.cols.get(name).copied().unwrap_or(self.born)
    }

    pub fn encode_cols(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec(&self.cols).context("cannot encode a row clock")
    }

    pub fn decode(born: Stamp, cols: &[u8]) -> Result<RowClock> {
        let cols = rmp_serde::from_slice(cols).context("a row clock does not decode")?;
        Ok(RowClock { born, cols })
    }
}

/// The columns of an incoming update that win against the row's clock, and the row's clock afterwards.
pub fn winning_columns(
    clock: &RowClock,
    stamp: Stamp,
    cols: &Row,
    groups: &[Vec<String>],
) -> (Row, RowClock) {
    let mut next = clock.clone();
    let mut won = Row::new();
    for (name, value) in cols {
        if stamp > standing(clock, name, groups) {
            won.insert(name.clone(), value.clone());
            next.cols.insert(name.clone(), stamp);
        }
    }
    (won, next)
}

/// The stamp a write to `column` must beat: the column's own, or its group's greatest.
fn standing(clock: &RowClock, column: &str, groups: &[Vec<String>]) -> Stamp {
    match groups.iter().find(|g| g.iter().any(|c| c == column)) {
        Some(group) => group
            .iter()
            .map(|c| clock.column(c))
            .max()
            .unwrap_or(clock.born),
        None => clock.column(column),
    }
}

/// Which of two rows that share a unique key keeps its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClashWinner {
    Existing,
    Incoming,
}

/// The earlier-born row wins: a row that existed before sync began (born at [`Stamp::ORIGIN`]) always
/// does, and so does the first of two concurrent creations everywhere.
pub fn clash_winner(existing_born: Stamp, incoming_born: Stamp) -> ClashWinner {
    if existing_born <= incoming_born {
        ClashWinner::Existing
    } else {
        ClashWinner::Incoming
    }
}

/// Merges a losing row into the winner, column by column: the result and its clock.
pub fn merge_rows(
    winner: (&Row, &RowClock),
    loser: (&Row, &RowClock),
    skip: &[&str],
    groups: &[Vec<String>],
) -> (Row, RowClock) {
    let (mut row, mut clock) = (winner.0.clone(), winner.1.clone());
    for (name, value) in loser.0 {
        if skip.contains(&name.as_str()) {
            continue;
        }
        let theirs = standing(loser.1, name, groups);
        if theirs > standing(winner.1, name, groups) {
            row.insert(name.clone(), value.clone());
            clock.cols.insert(name.clone(), theirs);
        }
    }
    (row, clock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::engine::change::Value;

    fn row(pairs: &[(&str, i64)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::Int(*v)))
            .collect()
    }

    #[test]
    fn later_stamp_wins_a_column_and_ties_go_to_the_higher_site() {
        let clock = RowClock::born(Stamp::new(10, 2));
        let (won, next) = winning_columns(&clock, Stamp::new(20, 3), &row(&[("a", 1)]), &[]);
        assert_eq!(won, row(&[("a", 1)]));
        assert_eq!(next.column("a"), Stamp::new(20, 3));
        // Same clock value from a lower site: loses.
        let (won, _) = winning_columns(&next, Stamp::new(20, 2), &row(&[("a", 9)]), &[]);
        assert!(won.is_empty());
        let (won, _) = winning_columns(&next, Stamp::new(20, 4), &row(&[("a", 9)]), &[]);
        assert_eq!(won, row(&[("a", 9)]));
    }

    #[test]
    fn concurrent_edits_of_different_columns_both_survive_in_any_order() {
        let base = RowClock::born(Stamp::new(1, 1));
        let a = (Stamp::new(5, 2), row(&[("subject", 1)]));
        let b = (Stamp::new(4, 3), row(&[("message", 2)]));
        let (wa, ca) = winning_columns(&base, a.0, &a.1, &[]);
        let (wb, cab) = winning_columns(&ca, b.0, &b.1, &[]);
        let (wb2, cb) = winning_columns(&base, b.0, &b.1, &[]);
        let (wa2, cba) = winning_columns(&cb, a.0, &a.1, &[]);
        assert_eq!((wa, wb), (wa2, wb2));
        assert_eq!(cab, cba);
    }

    /// The trial's discussion: site 2 replied (user 5 at 300), then site 3 replied as the same user
    /// 7 at 200 by its wall clock but later by stamp; site 2's usermodified must not survive alone.
    #[test]
    fn a_group_wins_or_loses_as_one_in_any_order() {
        let groups = vec![vec!["timemodified".to_string(), "usermodified".to_string()]];
        let base = RowClock::born(Stamp::new(1, 1));
        let a = (
            Stamp::new(5, 2),
            row(&[("timemodified", 300), ("usermodified", 5)]),
        );
        // Site 3's usermodified did not change its value, but the group travels whole.
        let b = (
            Stamp::new(6, 3),
            row(&[("timemodified", 400), ("usermodified", 7)]),
        );
        let (_, ca) = winning_columns(&base, a.0, &a.1, &groups);
        let (wb, cab) = winning_columns(&ca, b.0, &b.1, &groups);
        assert_eq!(wb, b.1);
        let (_, cb) = winning_columns(&base, b.0, &b.1, &groups);
        let (wa, cba) = winning_columns(&cb, a.0, &a.1, &groups);
        assert!(wa.is_empty(), "{wa:?}");
        assert_eq!(cab, cba);
        // A sender that sent one column of the group loses it to a newer write of another.
        let old = (Stamp::new(5, 9), row(&[("usermodified", 8)]));
        let mut clock = base.clone();
        clock.cols.insert("timemodified".into(), Stamp::new(6, 3));
        let (won, _) = winning_columns(&clock, old.0, &old.1, &groups);
        assert!(won.is_empty(), "{won:?}");
        let (won, _) = winning_columns(&clock, old.0, &old.1, &[]);
        assert_eq!(won, old.1);
    }

    #[test]
    fn earlier_born_row_wins_a_clash() {
        assert_eq!(
            clash_winner(Stamp::new(5, 3), Stamp::new(7, 2)),
            ClashWinner::Existing
        );
        assert_eq!(
            clash_winner(Stamp::new(7, 2), Stamp::new(5, 3)),
            ClashWinner::Incoming
        );
        assert_eq!(
            clash_winner(Stamp::ORIGIN, Stamp::new(1, 2)),
            ClashWinner::Existing
        );
    }

    #[test]
    fn merging_a_loser_keeps_the_newer_column_values() {
        let w = (row(&[("id", 11), ("finalgrade", 50), ("feedback", 1)]), {
            let mut c = RowClock::born(Stamp::new(5, 2));
            c.cols.insert("feedback".into(), Stamp::new(9, 2));
            c
        });
        let l = (
            row(&[("id", 12), ("finalgrade", 70), ("feedback", 2)]),
            RowClock::born(Stamp::new(7, 3)),
        );
        let (merged, clock) = merge_rows((&w.0, &w.1), (&l.0, &l.1), &["id"], &[]);
        assert_eq!(
            merged,
            row(&[("id", 11), ("finalgrade", 70), ("feedback", 1)])
        );
        assert_eq!(clock.column("finalgrade"), Stamp::new(7, 3));
        assert_eq!(clock.born, Stamp::new(5, 2));
    }
}
