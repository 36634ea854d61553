"""Service-layer functions shared by the HTTP API, the CLI and the benchmarks."""
