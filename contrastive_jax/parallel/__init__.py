"""Parallelism: the device mesh from the config (`mesh`), sharding rules for params, optimizer
state and batches (`sharding`), and multi-process start-up with jax.distributed
(`distributed`).

It imports only `errors`; every package that places arrays on devices imports it
(docs/architecture.md).
"""
