//! The rule lists and files, against the real Moodle 4.5 schema.

use crate::sync::schema::references;
use crate::sync::schema::rules::*;
use crate::sync::schema::tests::moodle_450;

fn rules_with(overrides: Option<&str>) -> Rules {
    let builtin = RuleFile::builtin().expect("built-in rules parse");
    let overrides = overrides.map(|text| {
        RuleFile::parse(Path::new("/etc/kituo/sync-overrides.ini"), text).expect("override parses")
    });
    Rules::derive(&moodle_450(), builtin, overrides)
}

fn direction(rules: &Rules, table: &str) -> Direction {
    rules
        .get(table)
        .map(|r| r.direction)
        .unwrap_or_else(|| panic!("no rule for {table}"))
}

#[test]
fn every_450_table_gets_a_rule_from_a_list() {
    let rules = rules_with(None);
    assert_eq!(rules.tables.len(), 494);
    let summary = rules.summary();
    assert_eq!(summary.total(), 494);
    // Every table is named by a list: none falls through to [defaults].
    let unlisted: Vec<&str> = rules
        .tables
        .values()
        .filter(|r| r.reason.starts_with("[defaults]"))
        .map(|r| r.table.as_str())
        .collect();
    assert!(unlisted.is_empty(), "not in any list: {unlisted:?}");
    for rule in rules.tables.values() {
        assert_eq!(rule.primary_key.as_deref(), Some("id"), "{}", rule.table);
        assert!(rule.source.is_some(), "{}", rule.table);
    }
    assert!(
        summary.both > 100 && summary.hub_to_centers > 100 && summary.never > 50,
        "{summary}"
    );
    assert!(summary.centers_to_hub >= 4, "{summary}");
}

#[test]
fn spot_checks_of_each_list() {
    let rules = rules_with(None);
    for t in [
        "forum_posts",
        "forum_discussions",
        "assign_submission",
        "grade_grades",
        "user",
        "user_enrolments",
        "question_attempts",
        "question_attempt_step_data",
        "files",
        "context",
        "message_conversations",
    ] {
        assert_eq!(direction(&rules, t), Direction::Both, "{t}");
    }
    for t in [
        "config",
        "config_plugins",
        "role",
        "role_capabilities",
        "capabilities",
        "course",
        "course_sections",
        "course_modules",
        "modules",
        "forum",
        "question",
        "question_categories",
        "qtype_multichoice_options",
        "grade_items",
        "quizaccess_seb_quizsettings",
    ] {
        assert_eq!(direction(&rules, t), Direction::HubToCenters, "{t}");
    }
    for t in ["logstore_standard_log", "log"] {
        assert_eq!(direction(&rules, t), Direction::CentersToHub, "{t}");
    }
    for t in [
        "sessions",
        "cache_flags",
        "cache_filters",
        "lock_db",
        "task_adhoc",
        "task_log",
        "context_temp",
        "stats_daily",
        "question_statistics",
        "external_tokens",
        "mnet_host",
    ] {
        assert_eq!(direction(&rules, t), Direction::Never, "{t}");
    }
    // Longest prefix and names win: message* is both, its per-site queues are never.
    assert_eq!(
        direction(&rules, "message_email_messages"),
        Direction::Never
    );
    let cache = rules.get("cache_flags").expect("cache_flags");
    assert!(
        cache.reason.starts_with("[never] cache_*: caches"),
        "{}",
        cache.reason
    );
    assert_eq!(
        cache.source.as_ref().map(|s| s.file.clone()),
        Some(PathBuf::from("appliance/sync-rules.ini"))
    );
}

#[test]
fn keys_references_and_protection() {
    let rules = rules_with(None);
    let gg = rules.get("grade_grades").expect("grade_grades");
    assert_eq!(
        gg.unique_keys,
        [vec!["userid".to_string(), "itemid".to_string()]]
    );
    let posts = rules.get("forum_posts").expect("forum_posts");
    assert!(posts.unique_keys.is_empty());
    let refs: Vec<(&str, &str)> = posts
        .referenced_by
        .iter()
        .map(|r| (r.table.as_str(), r.column.as_str()))
        .collect();
    assert!(refs.contains(&("forum_posts", "parent")), "{refs:?}");
    // Declared (forum_queue.postid) and listed (forum_read.postid, undeclared in 4.5) both count.
    assert!(refs.contains(&("forum_queue", "postid")), "{refs:?}");
    assert!(refs.contains(&("forum_read", "postid")), "{refs:?}");
    assert!(
        refs.contains(&("forum_discussions", "firstpost")),
        "{refs:?}"
    );
    let user = rules.get("user").expect("user");
    assert_eq!(user.protect, Some(Protection::SiteAdmins));
    let ra = rules.get("role_assignments").expect("role_assignments");
    assert_eq!(ra.protect, Some(Protection::SystemContext));
    let linked = rules
        .get("auth_oauth2_linked_login")
        .expect("auth_oauth2_linked_login");
    assert_eq!(linked.protect, Some(Protection::SiteAdminsUserid));
    let local = &rules.site_local("config")[0];
    assert_eq!(local.column, "name");
    assert!(local.values.contains("version") && local.values.contains("allversionshash"));
    assert!(!local.values.contains("siteadmins"));
    let plugins = rules.site_local("config_plugins");
    let columns: Vec<&str> = plugins.iter().map(|l| l.column.as_str()).collect();
    assert_eq!(columns, ["name", "plugin"]);
    assert!(plugins[0].values.contains("version") && plugins[0].values.contains("lastcronstart"));
    assert_eq!(
        plugins[1].values.iter().collect::<Vec<_>>(),
        ["tool_brickfield"]
    );
    assert!(
        user.referenced_by.len() > 100,
        "{}",
        user.referenced_by.len()
    );
    assert_eq!(rules.get("forum_posts").and_then(|r| r.protect), None);
}

#[test]
fn override_file_wins() {
    let rules = rules_with(Some(
        "; this center keeps its own log\n[never]\nlogstore_standard_log = local only\n\n[both]\ncache_flags = we want it\nforum = teachers here edit forums\n\n[protect]\nuser = none\n",
    ));
    assert_eq!(direction(&rules, "logstore_standard_log"), Direction::Never);
    // A name in the override beats a pattern in the built-in file, and vice versa patterns there
    // still apply to the rest.
    assert_eq!(direction(&rules, "cache_flags"), Direction::Both);
    assert_eq!(direction(&rules, "cache_filters"), Direction::Never);
    assert_eq!(direction(&rules, "forum"), Direction::Both);
    assert_eq!(direction(&rules, "forum_posts"), Direction::Both);
    let log = rules.get("logstore_standard_log").expect("log");
    assert_eq!(log.source.as_ref().map(|s| s.line), Some(3));
    assert_eq!(rules.get("user").and_then(|r| r.protect), None);
    let defaults = rules_with(Some("[defaults]\ndirection = never\n"));
    assert_eq!(
        defaults
            .for_unknown_table("local_thing", &[("id", "bigint")])
            .direction,
        Direction::Never
    );
    assert_eq!(direction(&defaults, "forum_posts"), Direction::Both);
}

#[test]
fn bad_override_names_file_line_and_key() {
    let cases = [
        ("[never]\nsessions = x\n[sometimes]\nfoo = y\n", "/etc/kituo/sync-overrides.ini:3: unknown section [sometimes]; known sections: [defaults], [protect], [site_local], [both], [hub_to_centers], [centers_to_hub], [never], [seed], [groups], [references], [identities], [same_facts], [caches], [local_columns]"),
        ("[never]\nsessions = x\n\nCache-* = y\n", "/etc/kituo/sync-overrides.ini:4: key 'Cache-*' in section [never]: expected a table name, or a prefix ending in '*' (like cache_*)"),
        ("[never]\nsessions =\n", "/etc/kituo/sync-overrides.ini:2: key 'sessions' in section [never]: say why after '=': the reason is kept with the rule"),
        ("[both]\nsessions = a\n[never]\nsessions = b\n", "/etc/kituo/sync-overrides.ini:4: key 'sessions' in section [never]: 'sessions' is already in [both] on line 2"),
        ("[defaults]\ndirection = sideways\n", "/etc/kituo/sync-overrides.ini:2: key 'direction' in section [defaults]: expected both, hub_to_centers, centers_to_hub or never, got 'sideways'"),
        ("[defaults]\ndirektion = both\n", "/etc/kituo/sync-overrides.ini:2: invalid key 'direktion' in section [defaults]; the only key is 'direction'"),
        ("[protect]\nuser = teachers\n", "/etc/kituo/sync-overrides.ini:2: key 'user' in section [protect]: expected siteadmins, siteadmins_userid, system_context or none, got 'teachers'"),
        ("[site_local]\nconfig = version\n", "/etc/kituo/sync-overrides.ini:2: key 'config' in section [site_local]: expected table.column (like config.name)"),
        ("[site_local]\nconfig.name =\n", "/etc/kituo/sync-overrides.ini:2: key 'config.name' in section [site_local]: list the column values of the rows each site keeps"),
        ("[caches]\nconfig = configs: x\n", "/etc/kituo/sync-overrides.ini:2: key 'config' in section [caches]: unknown kind 'configs'; known kinds: config, role, user, course, group, grouping, event"),
        ("[caches]\nrole = role: x\n", "/etc/kituo/sync-overrides.ini:2: key 'role' in section [caches]: expected the kind and the column holding its id, like 'role roleid'"),
        ("[caches]\nrole = role id\n", "/etc/kituo/sync-overrides.ini:2: key 'role' in section [caches]: say why after the kind: 'kind column: reason'"),
        ("[local_columns]\ncourse = id: x\n", "/etc/kituo/sync-overrides.ini:2: key 'course' in section [local_columns]: expected column names other than id, each alone or as column=value"),
    ];
    for (text, want) in cases {
        let e = RuleFile::parse(Path::new("/etc/kituo/sync-overrides.ini"), text).unwrap_err();
        assert_eq!(e.to_string(), want);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sync-overrides.ini");
    std::fs::write(&path, "[never]\nforum_posts\n").expect("write");
    let e = Rules::load(&moodle_450(), Some(&path)).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        format!(
            "{}:2: expected '[section]' or 'key = value', got 'forum_posts'",
            path.display()
        )
    );
    // A missing override file is no error: the file is optional.
    let rules = Rules::load(&moodle_450(), Some(&dir.path().join("absent.ini"))).expect("loads");
    assert_eq!(rules.tables.len(), 494);
}

#[test]
fn unknown_tables_fall_back_to_the_lists() {
    let rules = rules_with(None);
    let r = rules.for_unknown_table("cache_newthing", &[("id", "bigint")]);
    assert_eq!(r.direction, Direction::Never);
    let r = rules.for_unknown_table("forum_newthing", &[("id", "BIGINT")]);
    assert_eq!(
        (r.direction, r.primary_key.as_deref()),
        (Direction::Both, Some("id"))
    );
    assert!(r.reason.contains("table not in XMLDB"), "{}", r.reason);
    let r = rules.for_unknown_table("local_plugin_data", &[("id", "int")]);
    assert_eq!(r.direction, Direction::Both);
    assert!(r.reason.starts_with("[defaults]"), "{}", r.reason);
    for pk in [
        &[("a", "bigint"), ("b", "bigint")][..],
        &[("code", "varchar")],
        &[],
    ] {
        let r = rules.for_unknown_table("forum_newthing", pk);
        assert_eq!(r.direction, Direction::Never, "{pk:?}");
        assert!(
            r.reason.starts_with("no single-column integer primary key"),
            "{}",
            r.reason
        );
    }
}

#[test]
fn summary_counts() {
    let rules = rules_with(None);
    let s = rules.summary();
    println!("{s}");
    let never = rules
        .tables
        .values()
        .filter(|r| r.direction == Direction::Never)
        .count();
    assert_eq!(s.never, never);
    assert_eq!(
        s.to_string(),
        format!(
            "494 tables: both {}, hub_to_centers {}, centers_to_hub {}, never {}",
            s.both, s.hub_to_centers, s.centers_to_hub, s.never
        )
    );
}

#[test]
fn site_local_rows_and_their_override() {
    use crate::sync::engine::change::{Row, Value};
    use crate::sync::engine::policy::Policy;

    let rules = rules_with(Some("[site_local]\nconfig.name = version, mycenter_only\n"));
    let [local] = rules.site_local("config") else {
        panic!("one rule for config")
    };
    assert_eq!(
        local.values.iter().collect::<Vec<_>>(),
        ["mycenter_only", "version"]
    );
    assert_eq!(local.source.line, 2);
    assert!(
        !rules.site_local("config_plugins").is_empty(),
        "the built-in entry of another table stays"
    );
    assert!(rules.site_local("forum_posts").is_empty());
    let policy = Policy::new(rules);
    let row = |name: &str| -> Row {
        Row::from([
            ("id".to_string(), Value::Int(7)),
            ("name".to_string(), Value::Bytes(name.as_bytes().to_vec())),
        ])
    };
    assert!(policy.is_site_local("config", &row("version")));
    assert!(!policy.is_site_local("config", &row("siteadmins")));
    assert!(!policy.is_site_local("config_plugins", &row("mycenter_only")));
    assert!(policy.is_site_local("config_plugins", &row("lastcronstart")));
}

/// Walks every integer column of Moodle 4.5 and prints how each is treated (`cargo test -p appliance
/// every_integer_column -- --nocapture` shows the listing).
#[test]
fn every_integer_column_of_450_is_a_reference_or_says_why_not() {
    let schema = moodle_450();
    let rules = rules_with(None);
    let verdicts = rules.references(&schema);
    for v in &verdicts {
        let target = v.target.as_deref().unwrap_or("-");
        let when: Vec<String> = v.when.iter().map(|(c, x)| format!("{c}={x}")).collect();
        let when = if when.is_empty() {
            String::new()
        } else {
            format!(" where {}", when.join(" "))
        };
        println!("{}.{}{when} -> {target}: {}", v.table, v.column, v.why);
    }
    let unexplained: Vec<String> = verdicts
        .iter()
        .filter(|v| v.why == references::UNEXPLAINED)
        .map(|v| format!("{}.{}", v.table, v.column))
        .collect();
    assert!(
        unexplained.is_empty(),
        "id columns nothing explains: {unexplained:?}"
    );
    let missing = references::missing_targets(&schema, &verdicts);
    assert!(missing.is_empty(), "listed tables 4.5 lacks: {missing:?}");
    let followed = verdicts.iter().filter(|v| v.target.is_some()).count();
    println!("{} integer columns, {followed} followed", verdicts.len());
    assert!(
        verdicts.len() > 2500 && followed > 850,
        "{followed}/{}",
        verdicts.len()
    );
    let verdict = |t: &str, c: &str| {
        verdicts
            .iter()
            .find(|v| v.table == t && v.column == c)
            .unwrap_or_else(|| panic!("{t}.{c} not listed"))
    };
    // The orphan the real-Moodle trial found: forum_posts.userid has an index, no key.
    for (table, column, target) in [
        ("forum_posts", "userid", "user"),
        ("forum_discussions", "usermodified", "user"),
        ("message", "useridfrom", "user"),
        ("user_lastaccess", "courseid", "course"),
        ("forum", "course", "course"),
        ("course", "category", "course_categories"),
        ("forum_read", "postid", "forum_posts"),
        ("grade_grades", "itemid", "grade_items"),
    ] {
        let v = verdict(table, column);
        assert_eq!(
            v.target.as_deref(),
            Some(target),
            "{table}.{column}: {}",
            v.why
        );
    }
    for (table, column) in [
        ("files", "itemid"),
        ("course_modules", "instance"),
        ("rating", "rating"),
        ("forum_posts", "created"),
    ] {
        let v = verdict(table, column);
        assert_eq!(v.target, None, "{table}.{column}: {}", v.why);
    }
    // The table another column chooses: a submission's files follow the submission.
    let submission_files = verdicts
        .iter()
        .find(|v| {
            v.table == "files"
                && v.column == "itemid"
                && v.when
                    .first()
                    .is_some_and(|(_, c)| c == "assignsubmission_file")
        })
        .expect("files.itemid by component");
    assert_eq!(
        submission_files.target.as_deref(),
        Some("assign_submission")
    );
    assert_eq!(
        submission_files.when,
        [
            ("component".to_string(), "assignsubmission_file".to_string()),
            ("filearea".to_string(), "submission_files".to_string())
        ]
    );
    let held = &rules.get("assign_submission").unwrap().referenced_by;
    assert!(
        held.iter().any(|r| r.table == "files" && r.when.len() == 2),
        "{held:?}"
    );
    // grade_grades.itemid is a declared key: the *.itemid entry does not override XMLDB.
    assert!(verdict("grade_grades", "itemid")
        .why
        .starts_with("XMLDB key"));
}

#[test]
fn groups_and_references_entries_are_checked() {
    for (text, key) in [
        (
            "[references]\nforum_posts.userid = user\n",
            "forum_posts.userid",
        ),
        ("[references]\nforumposts = user: why\n", "forumposts"),
        (
            "[groups]\nforum_discussions = timemodified: why\n",
            "forum_discussions",
        ),
        ("[groups]\nforum_discussions = a b\n", "forum_discussions"),
        (
            "[references]\nfiles.itemid/mod_forum = forum_posts by component filearea: why\n",
            "files.itemid/mod_forum",
        ),
    ] {
        let err = RuleFile::parse(Path::new("/etc/kituo/sync-overrides.ini"), text)
            .expect_err(text)
            .to_string();
        assert!(
            err.contains("sync-overrides.ini:2") && err.contains(key),
            "{err}"
        );
    }
    let rules = rules_with(Some(
        "[groups]\nforum_discussions = none: written apart here\n\
         [references]\nforum_posts.userid = none: a test\n",
    ));
    assert!(rules
        .get("forum_discussions")
        .unwrap()
        .column_groups
        .is_empty());
    let user = rules.get("user").unwrap();
    assert!(!user
        .referenced_by
        .iter()
        .any(|r| r.table == "forum_posts" && r.column == "userid"));
    let rules = rules_with(None);
    assert_eq!(
        rules.get("forum_discussions").unwrap().column_groups,
        [vec!["timemodified".to_string(), "usermodified".to_string()]]
    );
}

/// A clash on a unique key either keeps both rows (an identity) or merges them (the same fact): for
/// every table that syncs both ways, each unique key of Moodle 4.5 is one or the other, by a list.
#[test]
fn every_unique_key_of_a_two_way_table_is_an_identity_or_the_same_fact() {
    let rules = rules_with(None);
    let mut unlisted = Vec::new();
    for rule in rules.tables.values() {
        if rule.direction != Direction::Both {
            continue;
        }
        for key in &rule.unique_keys {
            let identity = rule.identities.iter().any(|i| i.is_key(key));
            if !identity && rule.same_fact.is_none() {
                unlisted.push(format!("{}({})", rule.table, key.join(",")));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "unique keys no list explains: {unlisted:?}"
    );
    let user = rules.get("user").unwrap();
    let username = user.identities.iter().find(|i| i.column == "username");
    assert_eq!(
        username.map(|i| i.scope.clone()),
        Some(vec!["mnethostid".to_string()])
    );
    assert!(user.same_fact.is_none(), "two accounts are two people");
    let groups = rules.get("groups").unwrap();
    assert!(groups
        .identities
        .iter()
        .any(|i| i.column == "name" && i.scope == ["courseid"]));
    assert!(rules.get("grade_grades").unwrap().same_fact.is_some());
}

#[test]
fn every_cache_rule_names_a_real_column_and_every_activity_clears_its_course() {
    let schema = moodle_450();
    let rules = rules_with(None);
    let has = |table: &str, column: &str| {
        schema
            .tables
            .get(table)
            .is_some_and(|t| t.fields.iter().any(|f| f.name == column))
    };
    let (caches, local) = rules.cache_lists();
    for (table, rule) in &caches {
        assert!(
            schema.tables.contains_key(*table),
            "[caches] {table}: no such table"
        );
        if rule.kind != CacheKind::Event {
            if let Some(column) = &rule.arg {
                assert!(has(table, column), "[caches] {table}: no column {column}");
            }
        }
    }
    for (table, columns) in &local {
        for column in &columns.columns {
            let column = &column.name;
            assert!(
                has(table, column),
                "[local_columns] {table}: no column {column}"
            );
        }
    }
    // An activity's own table is what its course's module info shows (name, intro, settings).
    for table in schema.tables.values() {
        let activity = table.component == format!("mod/{}/db", table.name);
        if activity {
            let rule = rules.caches(&table.name);
            assert!(
                rule.is_some_and(
                    |r| r.kind == CacheKind::Course && r.arg.as_deref() == Some("course")
                ),
                "[caches] has no 'course course' for the activity table {}",
                table.name
            );
        }
    }
    let names = |table: &str| -> Vec<(String, Option<String>)> {
        let local = rules.local_columns(table).iter();
        local
            .map(|c| (c.name.clone(), c.arrives_as.clone()))
            .collect()
    };
    assert_eq!(names("course"), [("cacherev".to_owned(), None)]);
    let mailed = [("mailed".to_owned(), Some("1".to_owned()))];
    assert_eq!(names("forum_posts"), mailed);
    assert_eq!(names("assign_user_flags"), mailed);
    let overridden = rules_with(Some("[caches]\nforum = event changesinforums: mine\n"));
    let forum = overridden.caches("forum").expect("forum");
    assert_eq!(
        (forum.kind, forum.arg.as_deref()),
        (CacheKind::Event, Some("changesinforums"))
    );
}
