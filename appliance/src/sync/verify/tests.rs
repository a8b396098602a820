use super::check::check_reply;
use super::chunk::Found;
use super::chunk::{advance, chunk_ids, chunk_of, mismatched, row_differences, window};
use super::*;

fn sum(chunk: i64, rows: u64, hash: u64) -> Sum {
    Sum { chunk, rows, hash }
}

#[test]
fn chunks_match_sql_floor_division_for_every_id() {
    assert_eq!(chunk_of(0, 1000), 0);
    assert_eq!(chunk_of(999, 1000), 0);
    assert_eq!(chunk_of(1000, 1000), 1);
    assert_eq!(chunk_of(-1, 1000), -1);
    assert_eq!(chunk_ids(-1, 1000), (-1000, -1));
    assert_eq!(chunk_ids(3, 1000), (3000, 3999));
    assert_eq!(chunk_of(i64::MAX, 1), i64::MAX);
    assert_eq!(
        chunk_ids(i64::MAX, 2),
        (i64::MAX, i64::MAX),
        "clamped, not wrapped"
    );
}

#[test]
fn windows_start_on_a_chunk_boundary_and_end_at_the_id_limit() {
    assert_eq!(window(1234, 100, 4), (1200, 1599));
    assert_eq!(window(7, 1, 3), (7, 9));
    assert_eq!(
        window(i64::MAX - 5, 1000, 64),
        (i64::MAX - 5 - (i64::MAX - 5) % 1000, i64::MAX)
    );
}

#[test]
fn the_walk_goes_to_the_nearer_next_row_and_stops_at_its_end() -> Result<()> {
    assert_eq!(advance(99, i64::MAX, Some(500), Some(300))?, Some(300));
    assert_eq!(advance(99, i64::MAX, None, Some(300))?, Some(300));
    assert_eq!(advance(99, i64::MAX, None, None)?, None);
    assert_eq!(advance(99, 199, Some(250), None)?, None, "past the chunk");
    assert_eq!(advance(i64::MAX, i64::MAX, Some(5), None)?, None);
    assert!(
        advance(99, i64::MAX, Some(50), None).is_err(),
        "a next row inside the window"
    );
    Ok(())
}

#[test]
fn differing_chunks_and_rows_are_told_apart_by_kind() {
    let ours = [sum(1, 2, 7), sum(2, 1, 5), sum(4, 1, 1)];
    let theirs = [sum(1, 2, 7), sum(2, 1, 6), sum(3, 1, 1)];
    assert_eq!(mismatched(&ours, &theirs), vec![2, 3, 4]);
    let found = row_differences(&ours, &theirs);
    let kinds: Vec<(i64, Kind, Option<u64>)> =
        found.iter().map(|f| (f.id, f.kind, f.here)).collect();
    assert_eq!(
        kinds,
        vec![
            (2, Kind::Different, Some(5)),
            (3, Kind::Missing, None),
            (4, Kind::Extra, Some(1)),
        ]
    );
}

#[test]
fn a_stray_reply_is_refused() {
    let req = SumsRequest {
        table: "forum_posts".into(),
        columns: vec!["id".into()],
        chunk: 100,
        lo: 1000,
        last: 1999,
    };
    let ok = SumsReply {
        sums: vec![sum(10, 1, 1), sum(19, 1, 1)],
        next: Some(2000),
    };
    assert!(check_reply(&req, &ok).is_ok());
    let outside = SumsReply {
        sums: vec![sum(20, 1, 1)],
        next: None,
    };
    assert!(check_reply(&req, &outside).is_err());
    let backwards = SumsReply {
        sums: vec![],
        next: Some(1500),
    };
    assert!(check_reply(&req, &backwards).is_err());
}

#[test]
fn oversized_windows_are_refused() {
    let mut req = SumsRequest {
        table: "t".into(),
        columns: vec!["id".into()],
        chunk: 1,
        lo: 0,
        last: MAX_SUMS as i64 - 1,
    };
    assert!(check_window(&req).is_ok());
    req.last += 1;
    assert!(check_window(&req).is_err());
    req.chunk = 0;
    assert!(check_window(&req).is_err());
}

#[test]
fn the_row_hash_quotes_names_and_marks_null() {
    let sql = row_hash_sql(&["id".into(), "we`ird".into()]);
    assert!(sql.contains("CAST(`we``ird` AS BINARY)"), "{sql}");
    assert!(sql.contains("'N')"), "{sql}");
}

#[test]
fn the_text_report_lists_ids_by_kind() {
    let mut t = TableReport {
        table: "forum_posts".into(),
        chunks: 7,
        differing_chunks: 2,
        ..TableReport::default()
    };
    t.note(
        &[
            Found {
                id: 11700,
                kind: Kind::Missing,
                here: None,
            },
            Found {
                id: 20002,
                kind: Kind::Extra,
                here: Some(1),
            },
            Found {
                id: 10500,
                kind: Kind::Different,
                here: Some(2),
            },
        ],
        2,
    );
    t.repair.repaired = 3;
    let report = Report {
        site: 2,
        chunk: 500,
        tables: vec![t],
        tables_only_here: vec![],
        tables_only_at_hub: vec!["newtable".into()],
        backlog: 1,
        unpulled: 0,
        repair: true,
    };
    let text = report.to_string();
    assert!(text.contains("differing: 3 rows in 1 table"), "{text}");
    assert!(
        text.contains("missing here: 11700  extra here: 20002  1 more not listed"),
        "{text}"
    );
    assert!(text.contains("repaired 3"), "{text}");
    assert!(
        text.contains("tables only at the hub, not compared: newtable"),
        "{text}"
    );
    assert!(
        text.contains("1 local change not yet acknowledged"),
        "{text}"
    );
    assert!(!report.identical());
}
