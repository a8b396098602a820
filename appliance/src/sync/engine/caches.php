<?php
// Kituo: clears at this site what Moodle clears when a change is made here, for rows that sync
// applied (made at another site). Run as `php -- DIRROOT DUE` with this script on stdin; DUE is JSON,
// kind => keys (ids, or event names; "*" for every key). The kinds are `[caches]`' in sync-rules.ini.
// Prints the kinds it cleared, as JSON.

define('CLI_SCRIPT', true);
[$dirroot, $due] = [$argv[1], json_decode($argv[2], true, 8, JSON_THROW_ON_ERROR)];
require($dirroot . '/config.php');
require_once($CFG->dirroot . '/course/lib.php');

// The courses that own the given groups or groupings; null if one is gone (then every course's).
function courses_of(string $table, array $ids): ?array {
    global $DB;
    [$in, $params] = $DB->get_in_or_equal($ids);
    $found = $DB->get_records_select_menu($table, "id $in", $params, '', 'id, courseid');
    return count($found) === count($ids) ? array_values(array_unique($found)) : null;
}

function clear_groups(?array $courses): void {
    if ($courses === null) {
        cache_helper::purge_by_definition('core', 'groupdata');
        cache_helper::purge_by_definition('core', 'coursehiddengroups');
    } else {
        cache_helper::invalidate_by_definition('core', 'groupdata', [], $courses);
        cache_helper::invalidate_by_definition('core', 'coursehiddengroups', [], $courses);
    }
    cache_helper::purge_by_definition('core', 'user_group_groupings');
}

foreach ($due as $kind => $keys) {
    $all = in_array('*', $keys, true);
    $ids = array_map('intval', $keys);
    switch ($kind) {
        case 'config':
            // set_config() invalidates this definition; $CFG is built from it on every request.
            cache_helper::purge_by_definition('core', 'config');
            break;
        case 'role':
            // As assign_capability() and the role editor do.
            $all ? cache::make('core', 'roledefs')->purge() : accesslib_clear_role_cache($ids);
            break;
        case 'user':
            // As role_assign(), enrol_user() and groups_add_member() do: the user's access and groups
            // are rebuilt at their next request.
            if ($all) {
                context_system::instance()->mark_dirty();
                cache_helper::purge_by_definition('core', 'user_group_groupings');
            } else {
                array_map('mark_user_dirty', $ids);
                cache_helper::invalidate_by_definition('core', 'user_group_groupings', [], $ids);
            }
            break;
        case 'course':
            // As course and module edits do: the course's modinfo revision, and the course lists.
            foreach ($all ? [0] : $ids as $id) {
                rebuild_course_cache($id, true);
            }
            cache_helper::purge_by_event('changesincourse');
            break;
        case 'group':
            clear_groups($all ? null : courses_of('groups', $ids));
            break;
        case 'grouping':
            clear_groups($all ? null : courses_of('groupings', $ids));
            break;
        case 'event':
            foreach ($keys as $event) {
                cache_helper::purge_by_event($event);
            }
            break;
        default:
            fwrite(STDERR, "unknown kind '$kind'\n");
            exit(2);
    }
}
echo json_encode(array_keys($due));
