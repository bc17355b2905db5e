"""The engine: walks the compiled graph (one handler per step kind), with the policies around handlers (retry,
timeout, fallback, breakers), triggers, shared state, events, the run context and the agent tool loop."""
