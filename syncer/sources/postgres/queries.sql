-- Named queries of the PostgreSQL source. Each block starts with "-- name: NAME".
-- Identifiers are never formatted in: they are passed as parameters, or composed with
-- psycopg.sql.Identifier where PostgreSQL's grammar has no parameter for them.

-- name: server_settings
SELECT current_setting('wal_level') AS wal_level,
       current_setting('server_version_num')::int AS version_num

-- name: relation_info
-- The relation, its kind, and its replica identity ('d' default = primary key,
-- 'f' full, 'i' index, 'n' nothing).
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%(name)s)

-- name: relation_columns
-- Columns in table order, with domains resolved to their base type.
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END AS type_oid
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum

-- name: relation_column_types
-- Columns in table order with their type names (a domain's base type's), for checking
-- a live subscription's filter; no rows when the relation does not exist.
SELECT a.attname, bt.typname
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attrelid = to_regclass(%(name)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum

-- name: identity_columns
-- Columns of the primary key (kind 'p') or of the replica identity index (kind 'i').
SELECT a.attname
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(oid)s
  AND ((%(kind)s = 'p' AND i.indisprimary) OR (%(kind)s = 'i' AND i.indisreplident))
ORDER BY k.ord

-- name: slot_info
SELECT slot_name, plugin, database, active,
       pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint AS confirmed_flush,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots WHERE slot_name = %(slot)s

-- name: publication_exists
SELECT 1 FROM pg_publication WHERE pubname = %(publication)s

-- name: publication_has_relation
SELECT 1 FROM pg_publication_rel WHERE prpubid =
    (SELECT oid FROM pg_publication WHERE pubname = %(publication)s) AND prrelid = %(oid)s

-- name: end_slot_reader
-- The walsender streaming from the slot, if any (a slot in use cannot be dropped).
SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
WHERE slot_name = %(slot)s AND database = current_database() AND active_pid IS NOT NULL

-- name: drop_slot
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
WHERE slot_name = %(slot)s AND database = current_database()

-- name: export_snapshot_slot
-- Run on a `replication=database` connection: the exported snapshot shows exactly
-- the transactions committed before the slot's consistent point.
CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export')

-- name: create_slot
SELECT pg_wal_lsn_diff(lsn, '0/0')::bigint
FROM pg_create_logical_replication_slot(%(slot)s, 'pgoutput')

-- name: copy_indexes
-- Valid, unique, non-partial indexes without expressions: their key columns (INCLUDE
-- columns left out) in index order, with their types, and whether all are NOT NULL.
-- The primary key comes first.
SELECT i.indexrelid::regclass::text,
       array_agg(a.attname::text ORDER BY k.ord),
       array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord),
       bool_and(a.attnotnull)
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON k.ord <= i.indnkeyatts
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(oid)s AND i.indisunique AND i.indisvalid
  AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid, i.indisprimary
ORDER BY i.indisprimary DESC, i.indexrelid

-- name: estimated_rows
-- The planner's row estimate (-1 before the first VACUUM or ANALYZE), summed over the
-- leaf partitions of a partitioned table.
SELECT CASE WHEN c.relkind = 'p' THEN
         (SELECT sum(greatest(p.reltuples, 0))::bigint
          FROM pg_partition_tree(c.oid) t JOIN pg_class p ON p.oid = t.relid WHERE t.isleaf)
       ELSE c.reltuples::bigint END
FROM pg_class c WHERE c.oid = %(oid)s

-- name: relation_pages
-- Pages on disk now (what TABLESAMPLE SYSTEM samples), over the leaf partitions of a
-- partitioned table.
SELECT CASE WHEN c.relkind = 'p' THEN
         (SELECT sum(pg_relation_size(t.relid))
          FROM pg_partition_tree(c.oid) t WHERE t.isleaf)
       ELSE pg_relation_size(c.oid) END / current_setting('block_size')::int
FROM pg_class c WHERE c.oid = %(oid)s

-- name: emit_marker
-- A shared copy's helper's settle marker: not transactional, so it is in the stream
-- at once, after every commit before it (see syncer/sources/postgres/shared.py).
SELECT pg_logical_emit_message(false, %(prefix)s, %(content)s)

-- name: emit_watermark
-- A watermark of the chunked copy, in the change stream (transactional: it is sent at
-- its commit, in commit order with the table's changes).
SELECT pg_logical_emit_message(true, %(prefix)s, %(content)s)

-- name: export_temporary_slot
-- A verification's slot, on a `replication=database` connection: gone with the session.
-- Its exported snapshot shows exactly the transactions committed before its consistent
-- point; the slot keeps every change committed after.
CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')

-- name: slot_changes
-- Run on the session that created the (temporary) slot: its changes committed before
-- `upto`, consumed, whole transactions of about `limit` rows at most.
SELECT data FROM pg_logical_slot_get_binary_changes(
  %(slot)s, %(upto)s::pg_lsn, %(limit)s,
  'proto_version', '1', 'publication_names', %(publication)s)

-- name: column_types
-- Each column's type as a cast names it.
SELECT attname, format_type(atttypid, atttypmod)
FROM pg_attribute WHERE attrelid = %(oid)s AND attnum > 0 AND NOT attisdropped
