"""routing_sim benchmarks: ``python -m benchmarks`` (or ``make bench``) prints one table."""
