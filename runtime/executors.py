"""The advisory lock a live process holds on its executor id, as Python and SQL see it.

Held by runtime/lifecycle.py for the life of a process that runs sagas; read by the audit
(orders/audit.py) and by takeover to tell a live executor from a dead one.
"""

LOCK_PREFIX = "dbos-executor:"


def lock_key(executor_id: str) -> str:
    """The text whose hashtextextended(…, 0) is the lock on `executor_id`."""
    return f"{LOCK_PREFIX}{executor_id}"


def lock_held_sql(key_sql: str, lock: str = "l") -> str:
    """An SQL condition: row `lock` of pg_locks is the granted lock on the key that SQL
    expression `key_sql` gives (for example `%s`, or `'dbos-executor:' || executor_id`), in
    this database. A bigint advisory lock shows as classid (high 32 bits) and objid (low)."""
    return f"""({lock}.locktype = 'advisory' AND {lock}.granted AND {lock}.objsubid = 1
           AND {lock}.database = (SELECT oid FROM pg_database
                                   WHERE datname = current_database())
           AND (({lock}.classid::bigint << 32) | {lock}.objid::bigint)
               = hashtextextended({key_sql}, 0))"""
