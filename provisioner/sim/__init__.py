"""The simulated Vast.ai: an ASGI app faithful to docs/vast-api.md (§11), with real GPU-workload backends.

Entry points are in `app` (create_app, running_sim, serving_sim, serve, run_sim). Modules, outside in:
app (pipeline, serving) → routes (the Vast API) / admin (`/_sim/`) → runtime (one running sim) →
state (instances and their state machine) → catalogue (offers), templates, listing (instance rows, v1 list),
filters (Vast's filter language), docker (env flags, logs), faults (faults, rate limits, request log),
workload (the per-instance HTTP servers), config (SimConfig).
"""
