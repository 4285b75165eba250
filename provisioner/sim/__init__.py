"""The simulated Vast.ai: an ASGI app faithful to ../shared/vast-api.md, with real GPU-workload backends."""
