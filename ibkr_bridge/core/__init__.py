"""The pure domain: records, errors, clock, Greeks, reset calendar, state machines.

Nothing here does IO or imports asyncpg, aiohttp or ib_async (checked by import-linter).
"""
