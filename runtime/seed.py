"""The demo catalog `make run` starts with, stored once (later edits are kept)."""

from typing import Any

import psycopg

from services import inventory

# sku, available, price_cents. TURBINE costs more than the default approval threshold.
DEMO_CATALOG = [
    ("WIDGET", 100, 1_999),
    ("GADGET", 50, 4_999),
    ("GIZMO", 20, 12_999),
    ("SPROCKET", 500, 250),
    ("TURBINE", 5, 125_000),
]


def seed_demo_catalog(conn: psycopg.Connection[Any]) -> bool:
    """Store the demo catalog if it never was; True if it was stored now."""
    with conn.transaction():
        first = conn.execute(
            """INSERT INTO orders.seeds (name) VALUES ('demo_catalog')
               ON CONFLICT DO NOTHING RETURNING name"""
        ).fetchone()
        if first is None:
            return False
        for sku, available, price_cents in DEMO_CATALOG:
            inventory.put_item(conn, sku, available, price_cents)
    return True
