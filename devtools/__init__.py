"""Development tools: seeded synthetic traffic and private servers for tests, the demo and benchmarks.

Nothing in the engine's own packages imports this one.
"""
