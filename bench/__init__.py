"""flowctl benchmarks: overhead per step, fan-out makespan, memory per branch, cold start and validation time.

Every figure is reported next to a baseline measured in the same run (raw asyncio, SQLite, or an empty interpreter),
so ratios hold across machines. Entry point: `python bench/run_benchmarks.py [--quick]`. See bench/README.md.
"""
