"""The read cache's names for the catalog (core/cache.py): which writes retire which entries.

A plan's entries (each version, and the latest) depend on the plan's generation, bumped by every
change of the plan, including a version coming into use (`in_use` is part of what GetPlan answers).
Entitlements are keyed by account and depend on the account's entitlements generation (bumped by
every subscription change of the account) and on one catalog-wide features generation, bumped when
any plan's features change: features change in place, and the cache cannot know which accounts
subscribe to the plan without reading the database. Feature edits are rare admin actions; the
price is one cold read per account afterwards.
"""

from __future__ import annotations

CATALOG_FEATURES = "catalog:features"


def plan_generation(plan_id: str) -> str:
    return f"plan:{plan_id}"


def entitlements_generation(account_id: str) -> str:
    return f"entitlements:{account_id}"
