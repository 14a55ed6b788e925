"""The core: spend operations, batches, holds, keys, expiry, concurrency, faults and seed parity."""
