"""GPU-bound RQ workers: each takes jobs for the models its GPU can hold and runs them on its Ollama."""
