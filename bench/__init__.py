"""Benchmark: the runner (web → Redis/RQ → worker → Ollama) against calling Ollama directly."""
