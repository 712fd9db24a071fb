"""Schemathesis hooks for scripts/fuzz/run (SCHEMATHESIS_HOOKS=hooks).

- A check, `refused_calls_change_nothing`: the store (the SQLite file
  FUZZ_DB, read-only) is digested before every call; after a call the
  server refused (4xx, 5xx) it must be the same. Run with one worker.
- Tallies for the closing line (FUZZ_REPORT, JSON): requests, server
  errors, failed checks by name, refused calls, state changes.
- `filter_failure`: a schema-valid request refused for a reason no schema
  can say (a business rule such as an unknown model or a top-up under the
  provider's minimum, or a relation between fields or with the stored
  state) is not a schema mismatch. Only `invalid_request` answers that do
  not name such a rule count (see RULES).
"""

import atexit
import hashlib
import json
import os
import sqlite3
import time

import schemathesis

DB = os.environ["FUZZ_DB"]
REPORT = os.environ.get("FUZZ_REPORT")
# Columns that change on calls that are not writes of the caller's.
VOLATILE = {("api_keys", "last_used_at"), ("keys", "last_used_at")}
# The outgoing-webhook worker records its attempts in the background
# (docs/webhooks.md): a delivery's progress is not a write of the caller's.
VOLATILE |= {
    ("webhook_deliveries", c)
    for c in ("status", "attempts", "next_attempt_at", "last_attempt_at", "last_status", "last_error", "delivered_at")
}
# Codes that refuse a schema-valid request for a reason the schema cannot state.
BUSINESS_CODES = {
    "unknown_model", "below_minimum_topup", "not_found", "conflict", "idempotency_conflict",
    "hold_not_open", "subscription_expired", "insufficient_credits", "plan_budget_exhausted",
    "account_suspended", "model_not_allowed", "rate_limited", "daily_cap_reached", "weekly_cap_reached",
    "forbidden", "unauthorized",
}
# `invalid_request` messages that state a relation between fields or with
# the stored state, which JSON Schema cannot express.
RULES = (
    "not both", "never moves backwards", "must not be before", "must not exceed", "the same above_input_tokens",
    "give exactly one of", "is after", "before from", "a model needs a price", "out of bounds", "must be above 0",
    "must be non-zero", "at most 1000000000", "the smallest", "is not a plan", "not in the price book",
    "is too large", "the clock", "later than", "expires before", "period", "would take the wallet",
    "must be in the future", "cannot be subscribed to", "positive ISO 8601 duration", "has no plan budget", "does not exist",
    "would exceed", "number out of range", "must be from 0 to", "past where it started",
)

stats = {"requests": 0, "server_errors": 0, "refused": 0, "state_changes": 0, "failures": {}, "changed_by": []}
_before = {}


def _digest():
    con = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=30)
    h = hashlib.sha256()
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
            keep = [c for c in cols if (table, c) not in VOLATILE]
            if not keep:
                continue
            names = ", ".join(f'"{c}"' for c in keep)
            h.update(table.encode())
            for row in con.execute(f'SELECT {names} FROM "{table}" ORDER BY {names}'):
                h.update(repr(row).encode())
    finally:
        con.close()
    return h.hexdigest()


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    _before[id(case)] = _digest()


@schemathesis.hook
def after_call(ctx, case, response):
    stats["requests"] += 1
    if response.status_code >= 500:
        stats["server_errors"] += 1
    if case.path == "/v1/test/clock" and response.status_code == 200 and case.method.upper() == "POST":
        # Time moved: the writer's idle sweep writes what became due (up to
        # years of gift periods per account, a few accounts per transaction).
        # Wait until the store stops changing, or a refused call that follows
        # would be blamed for the sweep's writes.
        last, quiet = _digest(), 0
        for _ in range(120):
            time.sleep(0.5)
            now = _digest()
            quiet = quiet + 1 if now == last else 0
            last = now
            if quiet >= 3:
                break


@schemathesis.check
def refused_calls_change_nothing(ctx, response, case):
    before = _before.pop(id(case), None)
    if response.status_code < 400 or before is None:
        return None
    stats["refused"] += 1
    if _digest() != before:
        stats["state_changes"] += 1
        stats["changed_by"].append(f"{case.method} {case.formatted_path} -> {response.status_code}")
        raise AssertionError(f"a refused call ({response.status_code}) changed the store")
    return None


def _error(response):
    try:
        return response.json().get("error", {})
    except Exception:
        return {}


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    code = getattr(failure, "code", "") or ""
    title = (getattr(failure, "title", "") or "").lower()
    if "schema-valid request rejected" in title or code == "ST202":
        error = _error(response)
        if error.get("code") in BUSINESS_CODES:
            return False
        message = error.get("message", "")
        if error.get("code") == "invalid_request" and any(rule in message for rule in RULES):
            return False
    name = title or code or "failure"
    stats["failures"][name] = stats["failures"].get(name, 0) + 1
    return True


@atexit.register
def _write_report():
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump(stats, f, indent=1)
